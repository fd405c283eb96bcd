"""Writes the plain French text shipped for language models, nety_jax/resources/textes_fr.txt.

Written for this project: short everyday sentences from hand-written templates
and vocabularies (animals and what they eat, the week, the weather, the market,
the kitchen, the town, the family), expanded deterministically (a fixed seed
picks the combinations and their order). Some facts never change ("le chat mange
du poisson"), so a language model can be checked on them; the rest varies.
Run: python scripts/build_text.py [--check]
"""
from __future__ import annotations

import os
import random
import sys

from shipped_file import write_or_check

OUT = os.path.join(os.path.dirname(__file__), "..", "nety_jax", "resources", "textes_fr.txt")

ANIMALS = {"le chat": ("du poisson", "sur le canapé", "miaule"), "le chien": ("de la viande", "dans sa niche", "aboie"),
           "la vache": ("de l'herbe", "dans le pré", "meugle"), "le lapin": ("des carottes", "dans son terrier", "saute"),
           "la poule": ("du grain", "dans le poulailler", "picore"), "le cheval": ("du foin", "dans l'écurie", "galope"),
           "la souris": ("du fromage", "dans un trou", "court"), "l'oiseau": ("des graines", "dans son nid", "chante"),
           "le cochon": ("des pommes", "dans la boue", "grogne"), "la chèvre": ("des feuilles", "dans la montagne", "bêle")}
WHEN = ["Le matin", "Le soir", "À midi", "Chaque jour", "Souvent", "Aujourd'hui", "Hier", "Le dimanche"]
PEOPLE = ["Marie", "Lucas", "Camille", "Hugo", "Léa", "Thomas", "Chloé", "Nathan", "Inès", "Julien",
          "Sophie", "Antoine", "Manon", "Karim", "Zoé", "Louis"]
FAMILY = ["sa mère", "son père", "sa sœur", "son frère", "sa grand-mère", "son grand-père", "ses amis",
          "sa cousine", "son voisin"]
PLACES = {"au marché": "des légumes frais", "à la boulangerie": "une baguette", "à la librairie": "un roman",
          "à la pharmacie": "des médicaments", "à la fromagerie": "du comté", "au supermarché": "du lait",
          "chez le fleuriste": "un bouquet de roses", "à la poste": "des timbres"}
TRANSPORT = ["à pied", "à vélo", "en bus", "en train", "en voiture", "en métro", "en tramway"]
CITIES = ["Paris", "Lyon", "Marseille", "Lille", "Bordeaux", "Nantes", "Toulouse", "Strasbourg", "Nice",
          "Rennes", "Grenoble", "Dijon"]
SEASONS = {"En hiver": "il fait froid et il neige parfois", "Au printemps": "les arbres fleurissent",
           "En été": "il fait chaud et les jours sont longs", "En automne": "les feuilles tombent des arbres"}
DISHES = {"une soupe de légumes": ("des carottes", "des poireaux"), "une omelette": ("des œufs", "du fromage"),
          "une tarte aux pommes": ("des pommes", "de la farine"), "des crêpes": ("du lait", "des œufs"),
          "un gratin": ("des pommes de terre", "de la crème"), "une salade": ("des tomates", "un concombre"),
          "un gâteau au chocolat": ("du chocolat", "du beurre"), "des pâtes": ("de la sauce tomate", "du basilic")}
HOBBIES = ["lit un livre", "joue de la guitare", "dessine", "regarde un film", "fait du jardinage",
           "écoute de la musique", "joue aux échecs", "écrit une lettre", "fait une promenade", "peint un tableau"]
DAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]
ACTIVITIES = {"lundi": "va à la piscine", "mardi": "prend un cours de piano", "mercredi": "joue au football",
              "jeudi": "va à la bibliothèque", "vendredi": "dîne chez ses amis", "samedi": "fait le marché",
              "dimanche": "se repose à la maison"}
COLORS = {"le ciel": "bleu", "l'herbe": "verte", "la neige": "blanche", "le soleil": "jaune",
          "la nuit": "noire", "la tomate": "rouge", "l'orange": "orange"}


def _animals(rng):
    for animal, (food, place, sound) in ANIMALS.items():
        cap = animal[0].upper() + animal[1:]
        for when in WHEN:
            yield f"{when}, {animal} mange {food}."
            yield f"{when}, {animal} dort {place}."
        yield f"{cap} mange {food} et dort {place}."
        yield f"{cap} {sound} quand il a faim."
        for name in rng.sample(PEOPLE, 4):
            yield f"{name} regarde {animal} qui mange {food}."


def _people(rng):
    for name in PEOPLE:
        for place, item in PLACES.items():
            yield f"{name} va {place} pour acheter {item}."
        for day in DAYS:
            yield f"Le {day}, {name} {ACTIVITIES[day]}."
        for hobby in rng.sample(HOBBIES, 5):
            yield f"Le soir, {name} {hobby}."
        for who in rng.sample(FAMILY, 3):
            city = rng.choice(CITIES)
            yield f"{name} rend visite à {who} à {city} {rng.choice(TRANSPORT)}."
        yield f"{name} habite à {rng.choice(CITIES)} et travaille {rng.choice(TRANSPORT)}."


def _weather(rng):
    for city in CITIES:
        for season, desc in SEASONS.items():
            yield f"{season}, à {city}, {desc}."
        yield f"Quand il pleut à {city}, on prend un parapluie."


def _kitchen(rng):
    for dish, (a, b) in DISHES.items():
        yield f"Pour préparer {dish}, il faut {a} et {b}."
        for name in rng.sample(PEOPLE, 5):
            yield f"{name} prépare {dish} pour le dîner."
            yield f"{name} achète {a} et {b} pour faire {dish}."


def _facts(rng):
    for thing, color in COLORS.items():
        yield f"{thing[0].upper() + thing[1:]} est {color}."
        yield f"Tout le monde sait que {thing} est {color}."
    for i, day in enumerate(DAYS):
        nxt = DAYS[(i + 1) % 7]
        yield f"Après le {day} vient le {nxt}."
        yield f"Le jour qui suit le {day} est le {nxt}."


def build_lines(seed: int = 2026) -> list[str]:
    rng = random.Random(seed)
    lines, seen = [], set()
    for gen in (_animals, _people, _weather, _kitchen, _facts):
        for line in gen(rng):
            if line not in seen:
                seen.add(line)
                lines.append(line)
    rng.shuffle(lines)
    return lines


def main() -> int:
    return write_or_check(__doc__, OUT, "".join(line + "\n" for line in build_lines()), "text", "lines", "build_text.py")


if __name__ == "__main__":
    sys.exit(main())
