"""Vocabulary of the rule labeler: mention phrases, cue words and heart/mediastinum state words.

Kept apart from the matching logic so the wording can be reviewed by someone who reads radiology
reports rather than regular expressions. All patterns are matched against lower-cased text.
Mention lists follow the CheXpert labeler's observation definitions (for example "scar" counts as
Lung Opacity, "fibrosis" as Pleural Other, a granuloma or a calcified nodule as neither) extended
with the wording of real chest X-ray reports ("xxxx" is the IU X-Ray de-identification token).
"""

from __future__ import annotations

# Kinds of mention.
FINDING = "finding"  # status from negation / uncertainty cues around it
UNCERTAIN_FINDING = "uncertain"  # hedged by nature ("vascular congestion", costophrenic blunting)
ANCHOR = "anchor"  # heart / mediastinum: status from the state words next to it
OTHER = "other"  # an abnormality outside the 14 observations; it only blocks No Finding

_W = r"(?:[\w-]+\s+)"  # one filler word and its trailing space

# (kind, observations, pattern); an observation ending in "?" is at most uncertain (heart failure
# suggests, but does not state, cardiomegaly). Where two patterns could start at the same
# character the longer, more specific one is listed first; a pattern that starts earlier in the
# sentence always wins.
MENTIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # --- abnormalities that are none of the 14 observations (listed first: they shadow words
    # such as "nodule" in "calcified nodule" or "effusion" in "pericardial effusion").
    (OTHER, (), r"(?<!non)(?<!non-)calcifi\w*\s+" + _W + r"{0,4}nodul\w*"),
    (OTHER, (), r"pericardial\s+effusions?"),
    (OTHER, (), r"(?:granulomatous|prior|old|remote|previous|healed)\s+" + _W + r"?infections?"),
    (OTHER, (), r"(?:osseous|bony|bone|lytic|blastic|sclerotic|destructive|skeletal)\s+"
                + _W + r"?lesions?"),
    (OTHER, (), r"subcutaneous\s+emphysema|pneumomediastinum|pneumoperitoneum|free\s+air"),
    (OTHER, (), r"emphysem\w*|copd|hyper-?(?:inflat|expan|aerat|lucen)\w*|bullae|bullous|bulla"),
    (OTHER, (), r"granulom\w*|calcifi\w*|calcific|atheroscl\w*|tuberculo\w*|histoplasm\w*"),
    (OTHER, (), r"degenerat\w*|spondylo\w*|osteophyt\w*|scolio\w*|kypho\w*|arthriti\w*"),
    (OTHER, (), r"hernia|eventration|elevat\w*|osteopeni\w*|demineraliz\w*|deformit\w*"),
    (OTHER, (), r"tortu\w*|ectasia|ectatic|unfold\w*|aneurysm\w*|(?:lymph)?adenopathy"),
    (OTHER, (), r"loss\s+of\s+(?:lung\s+)?volume|volume\s+loss|cystic\s+fibrosis|bronchiectasis|"
                r"bronchitis|aspiration|cysts?|pulmonary\s+(?:arterial\s+)?hypertension|"
                r"hilar\s+(?:enlargement|prominence|fullness)"),
    # --- support devices: tubes, lines, catheters, pacers, valves and orthopaedic hardware.
    # Sternotomy wires, surgical clips, monitor leads and stents are not in CheXpert's list.
    (FINDING, ("Support Devices",),
     r"pace(?:maker|r)s?|a?icds?|defibrillators?|picc|port-?a-?cath|mediport|cabg\s+markers?|"
     r"(?:central|venous|arterial|jugular|subclavian|femoral|dialysis|midline|monitoring|"
     r"swan[\s-]ganz|support|picc)\s+lines?|catheters?|tubes?|(?:prosthetic|mechanical|"
     r"bioprosthetic|artificial)\s+" + _W + r"?valves?|valve\s+(?:replacement|prosthesis)|"
     r"hardware|screws?|(?<!-)(?<!end\s)plates?(?![\s-]*like)(?!\s+atelecta)|arthroplast\w*|"
     r"(?:closure\s+|electronic\s+|cardiac\s+)?devices?|coils?|drains?|cannula|"
     r"support\s+(?:apparatus|equipment)"),
    # --- pleura.
    (FINDING, ("Pneumothorax", "Pleural Effusion"), r"hydropneumothora\w*"),
    (FINDING, ("Pneumothorax",), r"pneumothora\w*"),
    (FINDING, ("Pleural Effusion",),
     r"effusions?|pleural\s+fluid|hydrothorax|fluid\s+in\s+the\s+" + _W + r"{0,2}fissures?"),
    (UNCERTAIN_FINDING, ("Pleural Effusion",),
     r"(?:costophrenic|cp|sulc[iu]s?|angles?|recess\w*)\s+(?:[\w-]+\s+){0,3}?"
     r"(?:(?:is|are)\s+)?blunt\w*|blunt\w*\s+(?:[\w-]+\s+){0,4}?"
     r"(?:costophrenic|cp|sulc[iu]s?|angles?|recess\w*)"),
    (FINDING, ("Pleural Other",),
     r"pleural\s+(?:thickening|plaques?|calcifications?|scar\w*)|pleuro-?parenchymal\s+scar\w*|"
     r"pleural[\s-]+parenchymal\s+scar\w*|fibrothorax|fibros\w*|fibrotic"),
    # --- heart and mediastinum.
    (FINDING, ("Cardiomegaly",), r"cardiomegaly|cardiac\s+enlargement|cardiac\s+hypertrophy"),
    (FINDING, ("Edema", "Cardiomegaly?"), r"(?:congestive\s+)?(?:heart|cardiac)\s+failure|chf"),
    (ANCHOR, ("Cardiomegaly", "Enlarged Cardiomediastinum"),
     r"(?:cardiac|heart)\s+and\s+mediastinal\s+(?:contours?|silhouettes?|borders?)"),
    (ANCHOR, ("Enlarged Cardiomediastinum",),
     r"(?:cardio[\s-]*(?:pulmonary\s+)?mediastin\w*(?:\s+(?:silhouettes?|contours?|structures|"
     r"shadow|configuration|size|width|margins?))?|(?:superior\s+)?mediastinum|"
     r"(?:superior\s+)?mediastinal\s+(?:and\s+hilar\s+)?(?:contours?|silhouettes?|"
     r"configuration|width|shadow|structures|borders?|widening|enlargement|size)|"
     r"hilar\s+and\s+mediastinal\s+(?:contours?|silhouettes?)|vascular\s+pedicle)"),
    (ANCHOR, ("Cardiomegaly",),
     r"(?<!left\s)(?<!right\s)heart(?:\s+(?:size|silhouette|shadow|contours?))?"
     r"(?!\s+(?:failure|border|xxxx\s+border))|"
     r"cardiac\s+(?:silhouette(?:\s+size)?|size|shadow|contours?|configuration)|"
     r"cardiopericardial\s+silhouette"),
    # --- lung parenchyma.
    (FINDING, ("Edema",), r"edema\w*"),
    (UNCERTAIN_FINDING, ("Edema",),
     r"(?:pulmonary\s+)?(?:vascular|venous)\s+(?:congestion|engorgement|prominence)|"
     r"congesti\w*|engorge\w*|cephalization|kerley|b[\s-]lines|indistinct\w*\s+"
     r"(?:\w+\s+)?(?:vascul\w*|vessels?|margins?|margination)|increased\s+(?:pulmonary\s+)?"
     r"vascularity|(?:vascularity|vasculature|vasculaturity)\s+(?:is|are)\s+increased"),
    (FINDING, ("Lung Lesion", "Lung Opacity"),
     r"nodular(?:[\s-]+like)?\s+" + _W + r"?(?:opacit\w+|opacification)"),
    (FINDING, ("Lung Lesion",),
     r"nodules?|nodular(?:[\s-]+like)?\s+" + _W + r"?densit\w+|"
     r"mass(?:es)?\b|tumou?rs?|neoplas\w*|carcinoma\w*|malignan\w*|cancer|lump|"
     r"metasta\w*|(?:cavitary|mass|lung|pulmonary|parenchymal|spiculated)\s+lesions?"),
    (FINDING, ("Consolidation",), r"consolidat\w*"),
    (FINDING, ("Pneumonia",), r"(?:broncho)?pneumonia\w*|pneumonitis|infectio\w*"),
    (FINDING, ("Atelectasis",),
     r"atelecta\w*|(?<!vertebral\s)(?<!body\s)(?<!height\s)collaps\w*"),
    (FINDING, ("Lung Opacity",),
     r"opaci\w*|infiltra\w*|(?:air[\s-]?space|alveolar|interstitial|parenchymal)\s+"
     r"(?:lung\s+)?(?:disease|process|filling|opacit\w+|markings?|pattern|changes?|prominence|"
     r"thickening|densit\w+)|reticul\w*|scar\w*|(?:peri)?bronchial\s+(?:wall\s+)?thickening|"
     r"peribronchial\s+cuffing|ground[\s-]glass|haz(?:e|iness|y)|(?:increased|patchy|streaky|"
     r"hazy|ill-defined|vague|linear|airspace|interstitial)\s+densit\w+"),
    (FINDING, ("Fracture",), r"fractur\w*|fx"),
)

# Words before an anchor that place something else on the heart or mediastinum ("clips overlying
# the mediastinum"); such an anchor says nothing about size.
PLACEMENT = (
    r"\b(?:over|overlying|overlie|overlies|behind|near|projected\s+over|projecting\s+over)"
    r"\s+the\s+(?:superior\s+|upper\s+|left\s+|right\s+)?$"
)

# Cue types for the words around a mention.
TERMINATOR = "term"  # ends the scope of earlier negation / uncertainty cues
PSEUDO = "pseudo"  # looks like a cue but is not one ("no change in", "not seen on prior")
NEG = "neg"
NEG_NEAR = "neg_near"  # negates a mention a few words on ("interval resolution of the effusion")
NEG_ADJ = "neg_adj"  # negates only the mention right after it ("normal interstitial markings")
UNC = "unc"
UNC_STRONG = "unc_strong"  # beats negation ("cannot exclude"); "no new X" too, as in CheXpert
_ADVERB = r"(?:entirely\s+|completely\s+|totally\s+|definitely\s+)?"

# (cue type, pattern); at one position the first pattern that matches wins. Patterns that start
# with a letter are matched as whole words.
CUES: tuple[tuple[str, str], ...] = (
    (UNC_STRONG, r"can\s*not\s+" + _ADVERB + r"(?:be\s+)?" + _ADVERB
                 + r"(?:exclude\w*|ruled?\s+out)|not\s+" + _ADVERB + r"(?:be\s+)?" + _ADVERB
                 + r"(?:excluded|ruled\s+out)|no\s+new|without\s+new"),
    (PSEUDO, r"(?:no|without)\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+|"
             r"definite\s+)?(?:change|increase|progression)|not\s+(?:significantly\s+)?changed|"
             r"not\s+only|not\s+" + _W + r"?(?:seen|visualized|present|identified|evident)\s+"
             r"(?:on|in)\s+(?:the\s+)?(?:prior|previous|comparison|earlier|old)|not\s+previously"),
    (NEG_NEAR, r"resolution\s+of|resolved|removal\s+of|removed|history\s+of"),
    (NEG, r"no|not|without|negative\s+for|free\s+of|clear\s+of|absen(?:ce|t)\s+of|"
          r"rather\s+than|ruled\s+out|excluded?|clear(?=\s+(?:focal\s+)?air[\s-]?space)"),
    (NEG_ADJ, r"normal|unremarkable"),
    (UNC, r"may|might|could|would|possibl[ey]|probabl[ey]|likely|questionabl[ey]|question\s+of|"
          r"questioned|suspect\w*|suspicio\w*|concern\w*|worrisome|suggest\w*|differential|"
          r"versus|vs|borderline|equivocal|presum\w*|perhaps|maybe|favou?r\w*|uncertain|"
          r"evaluation\s+(?:of|for)"),
    (UNC, r"\?"),
    (TERMINATOR, r"but|however|although|though|except|whereas|while|yet|which|otherwise|"
                 r"other\s+than|aside\s+from|apart\s+from|besides|there\s+(?:is|are|has|have|"
                 r"was|were)\b(?!\s+(?:no|not)\b)"),
    (TERMINATOR, r";"),
)

# Cues looked for right after a mention ("pneumothorax has resolved").
POST_CUES: tuple[tuple[str, str], ...] = (
    (PSEUDO, r"not\s+" + _W + r"?(?:seen|visualized|present|identified|evident)\s+(?:on|in)\s+"
             r"(?:the\s+)?(?:prior|previous|comparison|earlier|old)|not\s+previously"),
    (UNC_STRONG, r"(?:can\s*not|not)\s+" + _ADVERB + r"(?:be\s+)?" + _ADVERB
                 + r"(?:excluded|ruled\s+out)"),
    (UNC, r"(?:is|are)\s+(?:suspected|questioned|possible|likely|probable|favou?red|considered)|"
          r"(?:may|might|could)\s+(?:also\s+)?(?:be\s+)?(?:present|seen|noted|developing)|"
          r"not\s+(?:well\s+)?(?:evaluated|assessed)|(?:poorly|incompletely)\s+evaluated|"
          r"not\s+well[\s-](?:seen|visualized)|versus|vs"),
    (NEG, r"not\s+(?:definitely\s+|clearly\s+|currently\s+|grossly\s+|convincingly\s+)?"
          r"(?:seen|identified|visualized|visible|present|evident|appreciated|demonstrated|"
          r"noted|detected|apparent|enlarged|widened)|absent|resolved|removed|cleared|"
          r"no\s+longer|ruled\s+out|excluded|within\s+(?:normal\s+limits|limits\s+of\s+normal)|"
          r"(?:is|are|appears?|remains?)\s+(?:now\s+)?(?:normal|unremarkable)"),
)

# State words for heart / mediastinum anchors ("heart size is normal", "widened mediastinum").
STATE_NEG = "neg"
STATE_POS = "pos"
STATE_UNC = "unc"
STATE_STABLE = "stable"
STATE_ABSENT = "absent"  # "no" / "without": negates an anchor only from the words before it
STATES: tuple[tuple[str, str], ...] = (
    (STATE_STABLE, r"no\s+(?:significant\s+|interval\s+|appreciable\s+)?change|"
                   r"not\s+(?:significantly\s+)?changed|without\s+(?:interval\s+)?change"),
    (STATE_NEG, r"not\s+(?:\w+\s+)?(?:enlarged|large|widened|wide|prominent|increased)|"
                r"non-?enlarged|no\s+(?:\w+\s+)?(?:enlargement|widening|cardiomegaly)|"
                r"negative\s+for|upper\s+limits?|top[\s-]+(?:of\s+)?normal|normal\w*|"
                r"unremarkable|maintained|preserved|midline"),
    (STATE_ABSENT, r"no|without|free\s+of"),
    (STATE_UNC, r"borderline|possibl[ey]|probabl[ey]|may|might|could|questionabl[ey]|likely|"
                r"suspect\w*|equivocal"),
    (STATE_POS, r"enlarg\w*|large|larger|big|widen\w*|wide|prominen\w*|increase\w*|"
                r"cardiomegaly"),
    (STATE_STABLE, r"stable|unchanged|similar|redemonstrated|again\s+(?:seen|noted)"),
)
