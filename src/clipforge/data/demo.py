"""The embedded demo set: real photos that ship inside scikit-image, scikit-learn and matplotlib.

The image files are read from the installed package folders (never downloaded, never copied into this
repository). Each photo has five captions written for it — a mix of descriptive captions and the short,
noisy alt-text that web data is full of — and a short class ``label`` for zero-shot demos. Non-photos that
ship with the packages (charts, logos, the rendered gift-box icon, synthetic test patterns) are left out.
A missing package skips its photos with a warning naming the package.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from clipforge.data.records import Record

# (module, pip package, folder inside the module)
_SOURCES = {
    "skimage": ("scikit-image", "data"),
    "sklearn": ("scikit-learn", os.path.join("datasets", "images")),
    "matplotlib": ("matplotlib", os.path.join("mpl-data", "sample_data")),
}

# key, module, file, label, captions
DEMO_PHOTOS: list[tuple[str, str, str, str, list[str]]] = [
    ("skimage_astronaut", "skimage", "astronaut.png", "astronaut", [
        "a smiling astronaut in an orange spacesuit holding a white helmet, a flag and a shuttle model behind her",
        "portrait of a female astronaut in an orange flight suit",
        "NASA official portrait",
        "IMG_0047",
        "space lady!!",
    ]),
    ("skimage_brick", "skimage", "brick.png", "brick", [
        "a black and white close-up of a brick surface laid in a running bond pattern",
        "rows of long narrow bricks separated by light mortar lines",
        "brick texture",
        "wall.jpg",
        "bricks bricks bricks",
    ]),
    ("skimage_camera", "skimage", "camera.png", "cameraman", [
        "a black and white photo of a man in a dark coat looking through a camera on a tripod",
        "a photographer standing on a lawn with his camera, buildings in the distance",
        "cameraman",
        "DSC_0001",
        "old school photography",
    ]),
    ("skimage_cell", "skimage", "cell.png", "cell", [
        "a grey microscope image of a single round bright cell on a dark textured background",
        "a small bright cell seen under a microscope",
        "microscopy",
        "frame_0012.tif",
        "blob",
    ]),
    ("skimage_chelsea", "skimage", "chelsea.png", "cat", [
        "close-up of a tabby cat with green eyes looking to the side",
        "the face of a brown striped cat with long white whiskers",
        "cute cat!!",
        "IMG_2041",
        "my cat chelsea",
    ]),
    ("skimage_clock_motion", "skimage", "clock_motion.png", "clock", [
        "a motion-blurred photo of a round clock against a plain grey wall",
        "a blurry wall clock smeared sideways by camera shake",
        "blurry",
        "clock.png",
        "oops moved the camera",
    ]),
    ("skimage_coffee", "skimage", "coffee.png", "coffee", [
        "a cup of espresso on a red saucer with a spoon, on a wooden table",
        "a white and red coffee cup filled with coffee topped with crema",
        "coffee time ☕",
        "photo",
        "IMG_5522.JPG",
    ]),
    ("skimage_coins", "skimage", "coins.png", "coins", [
        "a black and white photo of rows of ancient greek coins on a dark background",
        "twenty-four old silver coins arranged in a grid",
        "coin collection",
        "scan003",
        "$$$",
    ]),
    ("skimage_grass", "skimage", "grass.png", "grass", [
        "a black and white close-up of dense grass blades and clover leaves",
        "a patch of lawn seen from above",
        "grass texture",
        "texture_07",
        "green stuff (in grey)",
    ]),
    ("skimage_gravel", "skimage", "gravel.png", "gravel", [
        "a black and white close-up of a layer of small sharp gravel stones",
        "crushed rock covering the ground",
        "gravel",
        "IMG_3310",
        "rocks",
    ]),
    ("skimage_hubble_deep_field", "skimage", "hubble_deep_field.jpg", "galaxies", [
        "the hubble deep field: hundreds of distant galaxies scattered across a black sky",
        "a telescope image of colourful galaxies and stars in deep space",
        "space wallpaper",
        "hdf.jpg",
        "so many stars",
    ]),
    ("skimage_ihc", "skimage", "ihc.png", "tissue", [
        "a microscope slide of tissue with brown immunohistochemical staining and blue nuclei",
        "stained human tissue under a microscope, brown cell membranes lining glands",
        "histology",
        "slide_42_x40",
        "pathology sample",
    ]),
    ("skimage_microaneurysms", "skimage", "microaneurysms.png", "blood vessels", [
        "a greyscale close-up of retinal blood vessels with two small dark spots",
        "a small crop of the back of an eye showing microaneurysms",
        "fundus crop",
        "img_0003",
        "eye",
    ]),
    ("skimage_moon", "skimage", "moon.png", "moon", [
        "a greyscale close-up of the surface of the moon with small craters",
        "lunar surface with a bright round crater and dark patches",
        "moon",
        "DSC09876",
        "space rocks",
    ]),
    ("skimage_motorcycle_left", "skimage", "motorcycle_left.png", "motorcycle", [
        "a red motorcycle parked in a garage in front of metal shelves full of boxes",
        "a red and black motorbike on its side stand inside a workshop",
        "my bike",
        "IMG_7781",
        "for sale, runs great",
    ]),
    ("skimage_motorcycle_right", "skimage", "motorcycle_right.png", "motorcycle", [
        "a red motorcycle in a cluttered garage with a wooden bench behind it",
        "side view of a classic red motorbike with chrome exhaust pipes",
        "motorcycle",
        "stereo_right.png",
        "vroom",
    ]),
    ("skimage_page", "skimage", "page.png", "book page", [
        "a photo of a printed book page titled region-based segmentation",
        "black text on a white page explaining markers for coins and background",
        "scan",
        "page 12",
        "tl;dr",
    ]),
    ("skimage_retina", "skimage", "retina.jpg", "retina", [
        "a colour fundus photograph of a human retina with the optic disc and branching blood vessels",
        "the orange-red back of an eye with red veins spreading from a bright spot",
        "retina scan",
        "IMG_0001.JPG",
        "eye exam",
    ]),
    ("skimage_rocket", "skimage", "rocket.jpg", "rocket", [
        "a rocket standing on a launch pad at dusk between lightning towers",
        "a white rocket lit by floodlights under a deep blue evening sky",
        "launch day!!",
        "rocket",
        "DSC_4410",
    ]),
    ("skimage_text", "skimage", "text.png", "handwriting", [
        "a black and white photo of handwritten math equations on lined paper",
        "handwriting on a sheet of paper, seen at an angle",
        "notes",
        "IMG_1203",
        "homework lol",
    ]),
    ("sklearn_china", "sklearn", "china.jpg", "pagoda", [
        "a traditional chinese pagoda with colourful roofs on a hill above a lake",
        "a tall temple tower at the summer palace surrounded by green trees",
        "china trip 2009",
        "IMG_0834",
        "beautiful view",
    ]),
    ("sklearn_flower", "sklearn", "flower.jpg", "flower", [
        "a close-up of an orange dahlia flower in front of dark green leaves",
        "a round peach-coloured dahlia bloom with many layered petals",
        "flower",
        "DSC_0150",
        "so pretty <3",
    ]),
    ("matplotlib_grace_hopper", "matplotlib", "grace_hopper.jpg", "naval officer", [
        "a portrait of grace hopper in a navy uniform and cap in front of an american flag",
        "an elderly woman in a dark military uniform with medals and glasses",
        "admiral",
        "portrait.jpg",
        "legend",
    ]),
]  # fmt: skip


def _package_dir(module: str) -> str | None:
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def demo_records() -> list[Record]:
    """One record per available demo photo: key = slug, image = file path, ``meta = {label, package, file}``."""
    out: list[Record] = []
    warned: set[str] = set()
    for key, module, filename, label, captions in DEMO_PHOTOS:
        package, folder = _SOURCES[module]
        root = _package_dir(module)
        path = os.path.join(root, folder, filename) if root else None
        if path is None or not os.path.isfile(path):
            if package not in warned:
                warnings.warn(
                    f"demo set: {package} (or its photo {filename}) is not installed; skipping", stacklevel=2
                )
                warned.add(package)
            continue
        out.append(Record(key, path, list(captions), {"label": label, "package": package, "file": filename}))
    return out
