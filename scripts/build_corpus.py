"""Writes the embedded French dialogue corpus, nety_jax/resources/dialogues_fr.jsonl.

Written for this project: hand-written templates and vocabularies, expanded
deterministically (a fixed seed picks the phrasings), duplicates dropped.
Each pair names its template ("template"), so a split can hold out whole templates
(scripts/bench_quality.py). Run: python scripts/build_corpus.py [--check]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

OUT = os.path.join(os.path.dirname(__file__), "..", "nety_jax", "resources", "dialogues_fr.jsonl")

NAMES = ["Marie", "Lucas", "Camille", "Hugo", "Léa", "Thomas", "Chloé", "Nathan", "Inès", "Julien",
         "Sophie", "Antoine", "Manon", "Karim", "Élodie", "Yanis", "Zoé", "Mathis", "Amélie", "Louis"]
# (city, season, weather)
CITIES = ["Paris", "Lyon", "Marseille", "Lille", "Bordeaux", "Nantes", "Toulouse", "Strasbourg",
          "Nice", "Rennes", "Montpellier", "Grenoble", "Brest", "Dijon", "Québec", "Bruxelles",
          "Genève", "Montréal"]
SEASONS = {"en hiver": "il fait souvent froid et gris", "au printemps": "le temps est doux et changeant",
           "en été": "il fait chaud et ensoleillé", "en automne": "il pleut souvent et le vent se lève"}
FEELINGS_GOOD = {"heureux": "Ça fait plaisir à entendre ! Qu'est-ce qui te rend heureux ?",
                 "content": "Super ! Profite bien de cette bonne humeur.",
                 "en forme": "Génial, c'est le moment de faire quelque chose qui te plaît !",
                 "détendu": "Tant mieux, prendre le temps de souffler fait du bien.",
                 "motivé": "Excellent ! Sur quoi veux-tu avancer aujourd'hui ?",
                 "fier de moi": "Tu peux l'être ! Raconte-moi ce que tu as réussi."}
FEELINGS_BAD = {"triste": "Je suis désolé que tu te sentes triste. Tu veux en parler ?",
                "fatigué": "Repose-toi un peu, une bonne nuit de sommeil aide beaucoup.",
                "stressé": "Respire calmement. Qu'est-ce qui te stresse en ce moment ?",
                "seul": "Je suis là pour discuter avec toi. Tu peux aussi appeler un ami.",
                "énervé": "Je comprends. Prends quelques minutes pour te calmer avant d'agir.",
                "inquiet": "C'est normal d'être inquiet parfois. Qu'est-ce qui t'inquiète ?",
                "malade": "Prends soin de toi, bois beaucoup d'eau et consulte un médecin si ça dure.",
                "perdu": "Pas de panique, on va y voir plus clair ensemble."}
INTENSITY = ["", "un peu ", "très ", "vraiment ", "assez "]
WHEN = ["aujourd'hui", "ce matin", "ce soir", "en ce moment", "depuis hier"]
# (food, article form, comment)
FOODS = [("la pizza", "une pizza maison"), ("les crêpes", "des crêpes au sucre"),
         ("le fromage", "un plateau de fromages"), ("la ratatouille", "une ratatouille bien mijotée"),
         ("les pâtes", "des pâtes à la tomate"), ("le couscous", "un couscous aux légumes"),
         ("la quiche", "une quiche lorraine"), ("le chocolat", "un gâteau au chocolat"),
         ("les sushis", "des sushis frais"), ("la soupe", "une soupe de légumes"),
         ("le poulet rôti", "un poulet rôti aux herbes"), ("les salades", "une salade composée"),
         ("la tarte aux pommes", "une tarte aux pommes"), ("le riz", "un riz sauté aux légumes"),
         ("les fruits", "une salade de fruits"), ("le pain", "une baguette bien croustillante")]
INGREDIENTS = {"des œufs": "une omelette ou des œufs brouillés",
               "des tomates": "une salade de tomates ou une sauce pour des pâtes",
               "des pommes de terre": "une purée ou des frites au four",
               "du riz": "un riz cantonais ou un risotto",
               "des courgettes": "un gratin de courgettes",
               "des carottes": "une soupe de carottes au cumin",
               "du poulet": "un poulet au curry",
               "des lentilles": "une salade de lentilles",
               "des champignons": "une poêlée de champignons à l'ail",
               "de la farine": "des crêpes ou un gâteau simple",
               "du fromage": "un croque-monsieur ou une tartiflette",
               "des pâtes": "des pâtes carbonara"}
HOBBIES = {"lire": "la lecture", "courir": "la course à pied", "nager": "la natation",
           "dessiner": "le dessin", "jouer de la guitare": "la guitare", "cuisiner": "la cuisine",
           "jardiner": "le jardinage", "faire du vélo": "le vélo", "regarder des films": "le cinéma",
           "jouer aux échecs": "les échecs", "chanter": "le chant", "danser": "la danse",
           "faire de la randonnée": "la randonnée", "jouer aux jeux vidéo": "les jeux vidéo",
           "prendre des photos": "la photographie", "écrire": "l'écriture",
           "faire du yoga": "le yoga", "peindre": "la peinture"}
JOBS = {"infirmier": "un métier précieux et exigeant", "professeur": "un beau métier de transmission",
        "développeur": "un métier où l'on apprend tous les jours",
        "boulanger": "un métier qui demande de se lever tôt", "médecin": "un métier de grande responsabilité",
        "cuisinier": "un métier créatif et intense", "comptable": "un métier rigoureux",
        "électricien": "un métier technique et utile", "vendeur": "un métier de contact",
        "journaliste": "un métier de curiosité", "architecte": "un métier entre art et technique",
        "agriculteur": "un métier essentiel et courageux", "étudiant": "une période riche en découvertes",
        "graphiste": "un métier très visuel", "chauffeur": "un métier qui demande de la vigilance"}
TASKS = {"organiser ma semaine": "fais la liste de tes tâches, puis classe-les par priorité",
         "apprendre l'anglais": "pratique un peu chaque jour et écoute des séries en version originale",
         "mieux dormir": "couche-toi à heure fixe et évite les écrans avant de dormir",
         "préparer un entretien": "renseigne-toi sur l'entreprise et entraîne-toi à te présenter",
         "écrire une lettre de motivation": "explique ce que tu apportes et pourquoi ce poste te plaît",
         "faire un budget": "note tes revenus et tes dépenses fixes, puis fixe une somme pour le reste",
         "réviser mes examens": "découpe le programme en petites parties et fais des pauses régulières",
         "ranger mon appartement": "commence par une pièce à la fois et donne ce que tu n'utilises plus",
         "trouver une idée de cadeau": "pense à ce que la personne aime faire le week-end",
         "me remettre au sport": "commence doucement, deux séances courtes par semaine suffisent",
         "cuisiner plus sainement": "ajoute des légumes à chaque repas et cuisine en avance",
         "planifier un voyage": "choisis d'abord tes dates et ton budget, puis la destination",
         "être plus productif": "travaille par blocs de vingt-cinq minutes avec de courtes pauses",
         "gérer mon stress": "respire lentement, bouge un peu et parle de ce qui te pèse"}
TASK_ASK = ["Peux-tu m'aider à {t} ?", "Comment faire pour {t} ?", "Tu as des conseils pour {t} ?",
            "J'ai besoin d'aide pour {t}.", "Aide-moi à {t}, s'il te plaît."]
DAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]
PLANS = {"aller au cinéma": "Bonne idée ! Tu sais déjà quel film tu vas voir ?",
         "voir des amis": "Ça va être sympa ! Passe un bon moment avec eux.",
         "me reposer": "Tu as bien raison, le repos est important.",
         "faire les courses": "N'oublie pas ta liste pour ne rien oublier !",
         "partir à la mer": "Quelle chance ! Profite bien du bord de mer.",
         "travailler": "Bon courage ! N'oublie pas de faire des pauses.",
         "aller au marché": "Le marché, c'est parfait pour trouver des produits frais.",
         "visiter un musée": "Super idée, tu vas découvrir plein de choses !"}
NUMBERS = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
           "onze", "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit",
           "dix-neuf", "vingt"]
GREETINGS = [("Bonjour !", "Bonjour ! Comment puis-je t'aider aujourd'hui ?"),
             ("Salut !", "Salut ! Ça me fait plaisir de te parler."),
             ("Bonsoir !", "Bonsoir ! Comment s'est passée ta journée ?"),
             ("Coucou !", "Coucou ! Quoi de neuf ?"),
             ("Salut, ça va ?", "Ça va très bien, merci ! Et toi ?"),
             ("Bonjour, comment vas-tu ?", "Je vais bien, merci de demander. Et toi, comment vas-tu ?"),
             ("Hello !", "Bonjour ! Je parle surtout français, mais je suis content de te voir."),
             ("Bonne nuit !", "Bonne nuit ! Dors bien et à demain."),
             ("Au revoir !", "Au revoir ! À bientôt j'espère."),
             ("À plus tard !", "À plus tard ! Passe une bonne journée."),
             ("Merci beaucoup !", "Avec plaisir ! N'hésite pas si tu as d'autres questions."),
             ("Merci pour ton aide.", "De rien, c'est fait pour ça !"),
             ("Je dois y aller.", "D'accord, à la prochaine !"),
             ("Bon week-end !", "Merci, bon week-end à toi aussi !")]
ABOUT = [("Comment tu t'appelles ?", "Je m'appelle NETY, ton assistant conversationnel."),
         ("Qui es-tu ?", "Je suis NETY, un assistant qui aime discuter en français."),
         ("Tu es un robot ?", "Je suis un programme informatique, un modèle de langage appelé NETY."),
         ("Quel âge as-tu ?", "Je n'ai pas d'âge comme toi, mais je suis un modèle assez récent."),
         ("Qui t'a créé ?", "J'ai été créé par une petite équipe de développeurs passionnés."),
         ("Que sais-tu faire ?", "Je peux discuter, donner des conseils simples et répondre à des questions."),
         ("Tu parles anglais ?", "Je parle surtout français, c'est la langue que je connais le mieux."),
         ("Est-ce que tu dors ?", "Non, je suis toujours disponible pour discuter."),
         ("Tu as des émotions ?", "Je n'ai pas d'émotions, mais j'essaie de comprendre les tiennes."),
         ("Où habites-tu ?", "Je vis dans un ordinateur, quelque part dans un serveur."),
         ("Tu es intelligent ?", "J'essaie de l'être, mais je fais encore des erreurs."),
         ("Tu aimes ton travail ?", "Oui, j'aime beaucoup discuter avec les gens."),
         ("Quelle est ta couleur préférée ?", "Je n'ai pas d'yeux, mais le bleu me semble apaisant."),
         ("Tu as des amis ?", "Toutes les personnes qui me parlent sont un peu mes amis."),
         ("Tu peux m'aider ?", "Bien sûr ! Dis-moi ce dont tu as besoin.")]
SMALL_TALK = [("Quoi de neuf ?", "Pas grand-chose, je suis prêt à discuter. Et toi ?"),
              ("Je m'ennuie.", "Et si tu essayais un nouveau livre ou une petite balade ?"),
              ("Raconte-moi une blague.", "Pourquoi les plongeurs plongent-ils en arrière ? Parce que sinon ils tombent dans le bateau !"),
              ("Tu connais une devinette ?", "Qu'est-ce qui a des dents mais ne mord jamais ? Un peigne !"),
              ("Il fait beau aujourd'hui.", "Profites-en pour sortir prendre l'air !"),
              ("Il pleut encore.", "N'oublie pas ton parapluie si tu sors."),
              ("J'ai faim.", "Qu'est-ce qui te ferait plaisir ? Une pizza, une soupe, une salade ?"),
              ("J'ai soif.", "Bois un grand verre d'eau, c'est le plus simple."),
              ("Je n'arrive pas à dormir.", "Essaie de lire quelques pages au calme, sans écran."),
              ("C'est mon anniversaire !", "Joyeux anniversaire ! Tu as prévu quelque chose pour fêter ça ?"),
              ("J'ai réussi mon examen !", "Bravo, félicitations ! Tu as bien travaillé."),
              ("J'ai raté mon bus.", "Pas de chance ! Le prochain ne devrait pas tarder."),
              ("Quel jour sommes-nous ?", "Je ne vois pas le calendrier, mais ton téléphone te le dira."),
              ("Tu as un conseil pour aujourd'hui ?", "Fais une chose qui te fait plaisir, même petite.")]
HOURS = list(range(0, 24))


def _weather():
    for city in CITIES:
        for season, desc in SEASONS.items():
            yield (f"Quel temps fait-il à {city} {season} ?",
                   f"À {city}, {season}, {desc}.")
            yield (f"Il fait comment à {city} {season} ?",
                   f"{season.capitalize()}, à {city}, {desc}.")
            yield (f"Que faire à {city} {season} ?",
                   f"{season.capitalize()}, {desc} à {city} : prévois une tenue adaptée et visite le centre.")
        yield (f"Il fait froid à {city} ?",
               f"Je n'ai pas la météo en direct pour {city}, regarde une application météo.")


def _feelings():
    for word, reply in {**FEELINGS_GOOD, **FEELINGS_BAD}.items():
        for inten in INTENSITY:
            for when in WHEN:
                yield (f"Je me sens {inten}{word} {when}.", reply)
        yield (f"Je suis {word}.", reply)


def _greetings_named():
    for name in NAMES:
        yield (f"Bonjour, je m'appelle {name}.", f"Enchanté {name} ! Je suis NETY. Comment vas-tu ?")
        yield (f"Salut, moi c'est {name} !", f"Salut {name} ! Ravi de faire ta connaissance.")
        yield (f"Tu te souviens de moi ? Je suis {name}.",
               f"Bonjour {name} ! Je ne garde pas de souvenirs, mais je suis content de te parler.")
        for city in CITIES:
            yield (f"Je m'appelle {name} et j'habite à {city}.",
                   f"Enchanté {name} ! {city} est une belle ville.")


def _food():
    for food, dish in FOODS:
        yield (f"J'adore {food}.", f"Moi aussi j'aime bien ! Tu préfères {dish} ?")
        yield (f"Tu aimes {food} ?", f"Je ne mange pas, mais {dish}, ça a l'air délicieux !")
        yield (f"Je n'aime pas {food}.", "Chacun ses goûts ! Qu'est-ce que tu aimes manger ?")
        yield (f"Ce soir, je mange {food}.", f"Bon appétit ! {dish.capitalize()}, c'est une bonne idée.")
        for name in NAMES:
            yield (f"{name} prépare {dish} ce soir.", f"{name} a de la chance, {dish}, c'est délicieux !")
    for ing, idea in INGREDIENTS.items():
        yield (f"Qu'est-ce que je peux cuisiner avec {ing} ?", f"Avec {ing}, tu peux faire {idea}.")
        yield (f"J'ai {ing}, une idée de recette ?", f"Tu pourrais préparer {idea}.")
        yield (f"Il me reste {ing} dans le frigo.", f"Parfait pour faire {idea} !")


def _hobbies():
    for verb, noun in HOBBIES.items():
        yield (f"J'aime {verb}.", f"C'est super ! {noun.capitalize()}, c'est une belle passion.")
        yield (f"Tu aimes {verb} ?", f"Je ne peux pas, mais j'aime beaucoup parler de {noun}.")
        yield (f"Je voudrais apprendre à {verb}.",
               f"Bonne idée ! Pour {noun}, commence doucement et pratique régulièrement.")
        yield (f"Le week-end, j'aime {verb}.", f"Quel bon programme ! {noun.capitalize()} aide à se détendre.")
        for name in NAMES:
            yield (f"Mon ami {name} adore {verb}.", f"{name} a bon goût, {noun} est une activité formidable.")


def _work():
    for job, desc in JOBS.items():
        yield (f"Je travaille comme {job}.", f"Le métier de {job}, c'est {desc}.")
        yield (f"Je suis {job}.", f"Ah, {job} ! C'est {desc}. Tu aimes ce que tu fais ?")
        yield (f"Je veux devenir {job}.", f"Bonne idée ! Devenir {job}, c'est choisir {desc}.")
        yield (f"Ma journée de {job} était longue.", "Bravo pour ta journée, repose-toi bien ce soir.")


def _tasks():
    for task, tip in TASKS.items():
        for ask in TASK_ASK:
            yield (ask.format(t=task), f"Bien sûr ! Pour {task}, {tip}.")


def _plans():
    for day in DAYS:
        yield (f"Qu'est-ce que tu fais {day} ?", f"Je suis là pour discuter, {day} comme les autres jours.")
        for plan, reply in PLANS.items():
            yield (f"{day.capitalize()}, je vais {plan}.", reply)


def _time():
    for h in HOURS:
        yield (f"Il est {h} heures, c'est l'heure de quoi ?", _hour_reply(h))
        yield (f"Il est déjà {h} heures ?", f"Oui, {h} heures. {_hour_reply(h)}")


def _hour_reply(h):
    if h < 6:
        return "C'est le milieu de la nuit, tu devrais dormir."
    if h < 10:
        return "C'est l'heure du petit déjeuner."
    if h < 12:
        return "C'est la fin de matinée, bientôt le déjeuner."
    if h < 14:
        return "C'est l'heure du déjeuner, bon appétit !"
    if h < 18:
        return "C'est l'après-midi, une petite pause s'impose."
    if h < 21:
        return "C'est l'heure du dîner."
    return "Il est tard, pense à aller te coucher."


def _arithmetic():
    for a in range(0, 11):
        for b in range(0, 11):
            yield (f"Combien font {a} plus {b} ?", f"{a} plus {b} font {a + b}.")
            if a >= b:
                yield (f"Combien font {a} moins {b} ?", f"{a} moins {b} font {a - b}.")
            if a <= 10 and b <= 10 and a * b <= 20 and a * b > 0:
                yield (f"Combien font {NUMBERS[a]} fois {NUMBERS[b]} ?",
                       f"{NUMBERS[a].capitalize()} fois {NUMBERS[b]} font {NUMBERS[a * b]}.")


def _variants(text):
    """The ways people type the same short message: with or without NETY's name, in lower
    case, without the final punctuation."""
    bare = text.rstrip(" !?.")
    end = text[len(bare):].strip()
    lowered = text[0].lower() + text[1:]
    return dict.fromkeys([text, text.lower(), bare, f"NETY, {lowered}", f"{bare} NETY {end}".strip(),
                          f"Dis, {lowered}"])


def _fixed():
    for i, (inp, tgt) in enumerate(GREETINGS + ABOUT + SMALL_TALK):
        for variant in _variants(inp):
            yield variant, tgt, f"fixed:{i}"


def _templated(gen):
    """(input, target, template) for each pair of a generator. The template names what made
    the pair: the fixed message and its variants, or the generator and its yield statement
    (so every pair of one template shares its wording), for splits that hold out templates."""
    it = gen()
    for item in it:
        if len(item) == 3:
            yield item
        else:
            line = it.gi_frame.f_lineno - gen.__code__.co_firstlineno
            yield (*item, f"{gen.__name__.strip('_')}:{line}")


def build_pairs(seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    pairs, seen = [], set()
    for gen in (_fixed, _greetings_named, _feelings, _weather, _food, _hobbies, _work, _tasks,
                _plans, _time, _arithmetic):
        for inp, tgt, template in _templated(gen):
            if (inp, tgt) not in seen:
                seen.add((inp, tgt))
                pairs.append({"input": inp, "target": tgt, "template": template})
    rng.shuffle(pairs)
    return pairs


def render(pairs: list[dict]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the shipped file differs")
    args = parser.parse_args()
    text = render(build_pairs())
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            same = f.read() == text
        print("corpus up to date" if same else "corpus differs: run scripts/build_corpus.py")
        return 0 if same else 1
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {text.count(chr(10))} pairs to {os.path.normpath(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
