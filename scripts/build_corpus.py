"""Writes the embedded French dialogue corpus, nety_jax/resources/dialogues_fr.jsonl.

Written for this project: hand-written templates and vocabularies, expanded
deterministically (a fixed seed picks the phrasings), duplicates dropped.
Each pair names its template ("template"), so a split can hold out whole templates
(scripts/bench_quality.py). Templates named "added..." were written later (issue #11) to enrich
the corpus with new topics and everyday vocabulary; the quality benchmark holds out only the
others, so its test set is the same with and without them and shows what they are worth. Run: python scripts/build_corpus.py [--check]
"""
from __future__ import annotations

import json
import os
import random
import sys

from shipped_file import write_or_check

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
# Added conversations (issue #11): new topics and everyday vocabulary, written for this project.
MORE_QA = [
    ("Mon chat griffe le canapé.", "Donne-lui un griffoir et récompense-le quand il s'en sert."),
    ("Mon chien aboie toute la nuit.", "Il s'ennuie peut-être : promène-le plus longtemps le soir et laisse-lui un jouet."),
    ("Je voudrais adopter un animal.", "C'est un bel engagement ! Pense au temps, à la place et au budget qu'il demande."),
    ("Quel animal choisir pour un petit appartement ?", "Un chat, un lapin ou des poissons s'adaptent bien aux petits espaces."),
    ("Mon poisson rouge ne bouge plus beaucoup.", "Vérifie la température et la propreté de l'eau de son aquarium."),
    ("J'ai mal à la tête.", "Bois de l'eau, repose-toi dans le calme et consulte si la douleur continue."),
    ("J'ai mal au dos après le travail.", "Lève-toi souvent, étire-toi doucement et règle bien la hauteur de ta chaise."),
    ("Je tousse depuis une semaine.", "Une toux qui dure mérite l'avis d'un médecin, prends rendez-vous."),
    ("Je me suis coupé le doigt.", "Lave la plaie à l'eau claire, appuie avec une compresse et mets un pansement."),
    ("Comment bien me laver les mains ?", "Avec du savon pendant trente secondes, entre les doigts et sous les ongles."),
    ("Je n'ai plus de voix.", "Repose ta voix, bois des boissons chaudes et évite de parler fort."),
    ("Comment aller à la gare ?", "Je ne connais pas ta position, mais une application de plans te guidera."),
    ("Mon train est en retard.", "C'est agaçant ! Préviens les personnes qui t'attendent et garde ton billet."),
    ("Je prends l'avion demain.", "Vérifie ton passeport, ta valise et l'heure d'embarquement ce soir."),
    ("Vaut-il mieux prendre le vélo ou la voiture ?", "Pour un trajet court, le vélo est souvent plus rapide, moins cher et bon pour la santé."),
    ("J'ai perdu mes clés.", "Refais ton chemin dans ta tête et regarde dans tes poches et ton sac."),
    ("J'ai oublié mon mot de passe.", "Utilise le lien de réinitialisation du site, puis choisis un mot de passe long."),
    ("Mon ordinateur est très lent.", "Ferme les programmes inutiles, redémarre-le et libère un peu d'espace disque."),
    ("Mon téléphone ne charge plus.", "Essaie un autre câble et une autre prise, puis nettoie doucement le port."),
    ("C'est quoi l'intelligence artificielle ?", "Ce sont des programmes qui apprennent à partir d'exemples pour accomplir des tâches."),
    ("Comment apprendre à programmer ?", "Choisis un langage simple comme Python et écris un petit projet chaque semaine."),
    ("Internet ne marche plus chez moi.", "Débranche la box pendant une minute, puis rebranche-la et patiente un peu."),
    ("Je dois acheter un cadeau pour ma mère.", "Pense à ses envies : un livre, une plante ou un repas ensemble lui feraient plaisir."),
    ("Mon frère m'énerve.", "Dis-lui calmement ce qui te gêne, sans crier, au bon moment."),
    ("Ma grand-mère vient dîner ce soir.", "Quelle belle soirée en perspective ! Tu lui prépares son plat préféré ?"),
    ("Mes parents se disputent souvent.", "C'est difficile à vivre. Tu peux en parler à quelqu'un de confiance."),
    ("Je vais être papa !", "Félicitations ! C'est une grande et belle nouvelle."),
    ("Ma sœur se marie en juin.", "Quelle joie ! Tu vas sûrement passer une journée inoubliable."),
    ("Mon fils ne veut pas faire ses devoirs.", "Fixe un moment calme chaque jour et aide-le à commencer par le plus facile."),
    ("Je déménage la semaine prochaine.", "Prépare des cartons par pièce et note ce qu'il y a dedans."),
    ("Mon voisin fait trop de bruit.", "Va lui parler poliment, il ne se rend peut-être pas compte du bruit."),
    ("Je cherche un appartement.", "Fixe ton budget, vise les quartiers proches de ton travail et visite plusieurs logements."),
    ("Comment économiser de l'argent ?", "Mets un peu de côté dès que tu reçois ton salaire et limite les petits achats."),
    ("Je veux changer de travail.", "Fais la liste de ce que tu aimes et cherche les postes qui y correspondent."),
    ("J'ai un entretien demain.", "Prépare deux ou trois exemples de ce que tu as réussi, et dors bien ce soir."),
    ("Mon chef ne m'écoute pas.", "Demande-lui un court rendez-vous et arrive avec des propositions précises."),
    ("Je commence un nouveau travail lundi.", "Bonne chance ! Pose des questions, c'est normal au début."),
    ("Je n'arrive pas à me concentrer.", "Coupe les notifications et travaille vingt minutes sur une seule tâche."),
    ("Je dois parler devant ma classe.", "Entraîne-toi à voix haute et regarde quelques visages amicaux pendant ton exposé."),
    ("J'ai eu une mauvaise note.", "Ce n'est qu'une note. Regarde tes erreurs, tu feras mieux la prochaine fois."),
    ("Quelle est la capitale de l'Italie ?", "La capitale de l'Italie est Rome."),
    ("Quelle est la capitale de l'Espagne ?", "La capitale de l'Espagne est Madrid."),
    ("Combien y a-t-il de jours dans une année ?", "Il y a trois cent soixante-cinq jours, et un de plus les années bissextiles."),
    ("Pourquoi le ciel est-il bleu ?", "La lumière du soleil se diffuse dans l'air, et le bleu se disperse davantage."),
    ("Quelle est la plus haute montagne du monde ?", "C'est l'Everest, dans l'Himalaya, à près de neuf mille mètres."),
    ("Combien de pattes a une araignée ?", "Une araignée a huit pattes."),
    ("Qui a écrit Les Misérables ?", "C'est Victor Hugo qui a écrit Les Misérables."),
    ("Quel est le plus grand océan ?", "Le plus grand océan est l'océan Pacifique."),
    ("Tu peux me conseiller un livre ?", "Le Petit Prince est court, poétique et se relit à tout âge."),
    ("Tu peux me conseiller un film ?", "Une comédie légère pour ce soir ? Choisis-en une que tes amis ont aimée."),
    ("Quelle musique écouter pour travailler ?", "Une musique calme sans paroles aide souvent à rester concentré."),
    ("J'ai envie de voyager.", "Où aimerais-tu aller ? La mer, la montagne ou une grande ville ?"),
    ("Je pars en vacances à la montagne.", "Profite de l'air pur et prévois de bonnes chaussures de marche."),
    ("Je pars en vacances à la mer.", "N'oublie pas la crème solaire et un chapeau !"),
    ("Que mettre dans ma valise ?", "Des vêtements pour trois jours, une trousse de toilette, tes papiers et un chargeur."),
    ("Je ne sais pas quoi faire ce week-end.", "Une balade en forêt, un musée ou un repas avec des amis ?"),
    ("Il neige dehors !", "Couvre-toi bien si tu sors, et profite du paysage."),
    ("Il fait trop chaud.", "Ferme les volets le jour, bois souvent et évite de sortir à midi."),
    ("Il y a de l'orage.", "Reste à l'intérieur et débranche les appareils fragiles."),
    ("Le vent souffle très fort.", "Range ce qui pourrait s'envoler sur ton balcon et sois prudent dehors."),
    ("Comment faire une omelette ?", "Bats trois œufs avec du sel, verse-les dans une poêle chaude et plie l'omelette."),
    ("Comment cuire du riz ?", "Compte deux volumes d'eau pour un de riz et laisse cuire à feu doux."),
    ("Je voudrais manger plus de légumes.", "Ajoute-en un à chaque repas : une soupe, une salade ou des légumes rôtis."),
    ("Qu'est-ce qu'on mange ce soir ?", "Pourquoi pas une soupe chaude et du pain, simple et réconfortant ?"),
    ("J'ai brûlé mon gâteau.", "Ça arrive ! La prochaine fois, baisse un peu le four et surveille la fin."),
    ("Je bois trop de café.", "Remplace une tasse sur deux par de l'eau ou une tisane."),
    ("Je veux arrêter de fumer.", "C'est une excellente décision. Ton médecin peut t'aider à trouver une méthode."),
    ("Comment me faire des amis ?", "Inscris-toi à une activité qui te plaît, on y rencontre des gens qui te ressemblent."),
    ("Je me sens nul.", "Tu n'es pas nul. Pense à trois choses que tu as bien faites cette semaine."),
    ("Personne ne m'écoute.", "Moi je t'écoute. Qu'est-ce que tu voudrais dire ?"),
    ("J'ai peur de l'avenir.", "C'est une peur courante. Concentre-toi sur ce que tu peux faire aujourd'hui."),
    ("J'ai fait un cauchemar.", "Ce n'était qu'un rêve. Respire doucement, tu es en sécurité."),
    ("Je suis en retard au travail.", "Préviens ton équipe tout de suite, puis arrive sans te précipiter."),
    ("Tu crois aux fantômes ?", "Je n'en ai jamais vu, mais les histoires de fantômes sont amusantes."),
    ("Tu aimes la musique ?", "Je ne l'entends pas, mais j'aime parler de chansons avec toi."),
    ("Tu rêves la nuit ?", "Non, je ne dors pas et je ne rêve pas."),
    ("Tu as un animal ?", "Non, mais j'aime bien qu'on me parle de chats et de chiens."),
    ("Tu connais Paris ?", "Je connais quelques faits sur Paris, comme la tour Eiffel et la Seine."),
    ("Tu es meilleur que les autres assistants ?", "Je fais de mon mieux, chaque assistant a ses points forts."),
    ("Peux-tu me réveiller demain ?", "Je ne peux pas sonner, mais ton téléphone a un réveil."),
    ("Tu peux envoyer un message à ma sœur ?", "Je ne peux pas envoyer de messages, mais je peux t'aider à l'écrire."),
    ("Écris-moi un poème court.", "Le matin se lève, doux et clair, et le café chante dans l'air."),
    ("Donne-moi un mot gentil.", "Tu comptes plus que tu ne le crois."),
    ("Dis-moi quelque chose d'intéressant.", "Les pieuvres ont trois cœurs et le sang bleu."),
    ("Comment dit-on merci en anglais ?", "On dit « thank you »."),
    ("Comment dit-on bonjour en espagnol ?", "On dit « hola »."),
    ("Que veut dire le mot éphémère ?", "Éphémère veut dire qui dure très peu de temps."),
    ("Corrige ma phrase : je suis allé au magasin hier soir.", "Ta phrase est correcte, bravo !"),
    ("Je n'aime pas les lundis.", "Prévois une petite chose agréable le lundi soir, ça aide."),
    ("J'ai gagné au loto !", "Incroyable ! Prends le temps de réfléchir avant de tout dépenser."),
    ("J'ai cassé mon téléphone.", "Aïe ! Regarde si ton assurance ou ta garantie couvre la réparation."),
    ("Je dois faire le ménage.", "Mets de la musique et commence par la pièce la plus rapide."),
    ("Mes plantes meurent.", "Arrose moins souvent mais plus profondément, et donne-leur de la lumière."),
    ("Comment planter des tomates ?", "Plante-les au soleil après les gelées et arrose au pied."),
]
PETS = {"mon chat": "ton chat", "mon chien": "ton chien", "mon lapin": "ton lapin",
        "ma tortue": "ta tortue", "mon perroquet": "ton perroquet", "mon hamster": "ton hamster"}
PET_PROBLEMS = {"ne mange plus": "Si {pet} ne mange plus depuis un jour, appelle le vétérinaire.",
                "dort toute la journée": "Un animal qui dort beaucoup peut être malade ou simplement âgé : "
                                         "surveille {pet} de près.",
                "a l'air triste": "Passe du temps à jouer avec {pet}, la compagnie fait du bien aux animaux.",
                "a fait une bêtise": "Reprends {pet} sans crier, tout de suite, et félicite ses bons "
                                     "comportements."}
TRANSPORT = {"en bus": "le bus", "en métro": "le métro", "en tramway": "le tramway", "à vélo": "le vélo",
             "à pied": "la marche", "en voiture": "la voiture", "en train": "le train"}


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


def _added():
    for i, (inp, tgt) in enumerate(MORE_QA):
        for variant in _variants(inp):
            yield variant, tgt, f"added:{i}"


def _added_pets():
    for pet, yours in PETS.items():
        for problem, reply in PET_PROBLEMS.items():
            yield f"{pet.capitalize()} {problem}.", reply.format(pet=yours)
            yield f"Que faire ? {pet.capitalize()} {problem}.", reply.format(pet=yours)


def _added_transport():
    for mode, noun in TRANSPORT.items():
        yield f"Je vais au travail {mode}.", f"{noun.capitalize()}, c'est pratique ! Ton trajet dure combien de temps ?"
        yield f"C'est mieux d'y aller {mode} ?", f"Ça dépend de la distance, mais {noun} est souvent un bon choix."


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
                _plans, _time, _arithmetic, _added, _added_pets, _added_transport):
        for inp, tgt, template in _templated(gen):
            if (inp, tgt) not in seen:
                seen.add((inp, tgt))
                pairs.append({"input": inp, "target": tgt, "template": template})
    rng.shuffle(pairs)
    return pairs


def render(pairs: list[dict]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)


def main() -> int:
    return write_or_check(__doc__, OUT, render(build_pairs()), "corpus", "pairs", "build_corpus.py")


if __name__ == "__main__":
    sys.exit(main())
