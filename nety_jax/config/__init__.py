"""One frozen, validated config for everything: model (per architecture), data, train, decode.

Loaded from YAML, overridden with ``section.key=value`` strings, validated with a
message that names the field, and written back beside every checkpoint.
"""
from nety_jax.config.loader import (Config, apply_overrides, from_dict, load_config, read_yaml,
                                    save_config)
from nety_jax.config.sections import (EOS_ID, PAD_ID, SOS_ID, UNK_ID, DataConfig, DecodeConfig,
                                      ModelConfig, TrainConfig)

__all__ = ["Config", "ModelConfig", "DataConfig", "TrainConfig", "DecodeConfig", "load_config",
           "from_dict", "apply_overrides", "read_yaml", "save_config",
           "PAD_ID", "SOS_ID", "EOS_ID", "UNK_ID"]
