"""The 43 official GTSRB class names, indexed by ClassId.

This is the one table of names in the project: reports, the CLI and the UI
all read it from here.
"""

CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

NUM_CLASSES = len(CLASS_NAMES)
assert NUM_CLASSES == 43

# What a horizontal mirror does to each class, for the class-aware flip of the training
# augmentation (TrainConfig.mirror): a symmetric sign stays itself, the pairs swap
# (curve left <-> right, turn right <-> left, straight-or-right <-> straight-or-left,
# keep right <-> left), and every other class has no mirror image in the set
# (a flipped "30" is not a sign), so it is never flipped.
MIRROR_SELF: tuple[int, ...] = (11, 12, 13, 15, 17, 18, 22, 26, 30, 35)
MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((19, 20), (33, 34), (36, 37), (38, 39))


def mirror_table() -> list[int]:
    """Class id -> the class of its mirror image, or -1 where the mirror is no GTSRB class."""
    table = [-1] * NUM_CLASSES
    for c in MIRROR_SELF:
        table[c] = c
    for a, b in MIRROR_PAIRS:
        table[a], table[b] = b, a
    return table
