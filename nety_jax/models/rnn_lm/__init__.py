"""The recurrent language model, from the shared scanned cells."""
