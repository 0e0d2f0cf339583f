"""generation: class-conditional image generation (e.g. MNIST digits from a DCGAN, models/gan.py).

There is no label to predict: the label column (MNIST's digit) is the condition. Its analysis is
multiclass's (class counts, vocabulary), and the training target is the class index. The task
needs exactly one `encoded_image` feature: `complete` records its shape and scaling, so the
family can emit images in the transformed (model input) scale and the export can turn them back
into pixels.

Contract with the family: the trained model is called as `model([noise, class_index])` with noise
[N, latent_dim] and int class indices [N], returns images [N, H, W, C] in the transformed scale,
and has an int attribute `latent_dim`.

Export (`serving_functions`): serving_default takes `noise` (float32 [N, latent_dim]) and
`class_id` (int64 [N], the class index in `vocabulary` order) and returns `images` (float32
[N, H, W, C], pixels in [0, 255]), `png` (string [N], the images encoded as PNG, ready to view)
and `classes` (string [N], the requested class names); `generate_by_name` is the same with `class_name`
(string [N], a class name) instead of `class_id`. An unknown class id or name fails the request
(INVALID_ARGUMENT). The same noise and class give the same image.

Evaluation (`evaluate`): samples generated for uniformly requested classes are scored by a
classifier (components/evaluation/generation.py); the gate's metrics are `METRICS` below.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.multiclass import Multiclass

NOISE, CLASS_ID, CLASS = "noise", "class_id", "class_name"
IMAGES, PNG, CLASSES = "images", "png", "classes"
SERVING_DEFAULT, BY_NAME = "serving_default", "generate_by_name"
IMAGE_KIND = "encoded_image"
PIXEL_MAX = 255.0
SAMPLE_CONFIDENCE, CLASSES_COVERED = "sample_confidence", "classes_covered"
MIN_CLASS_SHARE, MAX_CLASS_SHARE, CLASS_AGREEMENT = "min_class_share", "max_class_share", "class_agreement"


class Generation(Multiclass):
    NAME = "generation"
    MONITORS = {"val_g_loss": "min"}  # the generator's loss on the eval split's real images
    METRICS = (SAMPLE_CONFIDENCE, CLASSES_COVERED, MIN_CLASS_SHARE, MAX_CLASS_SHARE, CLASS_AGREEMENT)
    LOWER_IS_BETTER = frozenset({MAX_CLASS_SHARE})
    FAIRNESS_METRICS = ()
    HEADLINE = ()
    SLICE_PLOT = ()
    SCORE_OUTPUT = IMAGES
    SCORES_ROWS = False

    # ------------------------------------------------------------ transform
    def complete(self, spec: dict) -> dict:
        """The image feature's name, shape and scaling (mean, std of the transform's state).

        Raises:
            ValueError: not exactly one encoded_image feature.
        """
        found = [t for t in spec["transforms"] if t["kind"] == IMAGE_KIND]
        if len(found) != 1:
            raise ValueError(f"task generation needs exactly one feature of kind {IMAGE_KIND!r}; got "
                             f"{[t['feature'] for t in found] or 'none'} (kinds: "
                             f"{sorted({t['kind'] for t in spec['transforms']})})")
        state = found[0]["state"]
        return {**self.info, "image": {"feature": found[0]["feature"], "output": found[0]["output"],
                                       "shape": list(state["shape"]), "mean": state["mean"], "std": state["std"]}}

    @property
    def image(self) -> dict:
        """{feature, output, shape, mean, std} of the generated image feature."""
        return self.info["image"]

    def pixel_range(self) -> tuple[float, float]:
        """Pixels 0 and 255 in the transformed scale: the range a generator's images must span."""
        mean, std = self.image["mean"], self.image["std"]
        return (0.0 - mean) / std, (PIXEL_MAX - mean) / std

    # ------------------------------------------------------------ training
    def output(self, x):
        raise NotImplementedError("a generation model has no classifier head: its family builds the generator")

    def compile_args(self):
        raise NotImplementedError("a generation model trains with its family's compile hook (e.g. model gan)")

    # ------------------------------------------------------------ export
    def example_signatures(self) -> dict:
        return {}

    def serving_functions(self, preprocessor, model, spec: dict) -> dict:
        import tensorflow as tf

        classes = tf.constant(self.classes, tf.string)
        mean, std = self.image["mean"], self.image["std"]

        def generate(noise, class_id):
            tf.debugging.assert_less(class_id, tf.constant(len(self.classes), tf.int64),
                                     message=f"class_id must be a class index in [0, {len(self.classes)})")
            tf.debugging.assert_non_negative(class_id, message="class_id must be a class index >= 0")
            y = model([noise, class_id], training=False)
            pixels = tf.clip_by_value(tf.cast(y, tf.float32) * std + mean, 0.0, PIXEL_MAX)
            png = tf.map_fn(lambda im: tf.io.encode_png(tf.cast(tf.round(im), tf.uint8)), pixels,
                            fn_output_signature=tf.string)
            return {IMAGES: pixels, PNG: png, CLASSES: tf.gather(classes, class_id)}

        def by_id(inputs):
            return generate(inputs[NOISE], inputs[CLASS_ID])

        def by_name(inputs):
            match = tf.equal(tf.expand_dims(inputs[CLASS], 1), tf.expand_dims(classes, 0))  # [N, C]
            tf.debugging.assert_equal(tf.reduce_all(tf.reduce_any(match, axis=1)), True,
                                      message=f"class must be one of {self.classes}")
            return generate(inputs[NOISE], tf.argmax(tf.cast(match, tf.int64), axis=1))

        noise = tf.TensorSpec([None, model.latent_dim], tf.float32, name=NOISE)
        return {SERVING_DEFAULT: (by_id, [{NOISE: noise, CLASS_ID: tf.TensorSpec([None], tf.int64, name=CLASS_ID)}]),
                BY_NAME: (by_name, [{NOISE: noise, CLASS: tf.TensorSpec([None], tf.string, name=CLASS)}])}

    def request_inputs(self, specs: dict, n: int) -> dict:
        """Seeded standard-normal noise and the classes in turn (by id or by name, as `specs` asks)."""
        latent = next(s.shape[-1] for k, s in specs.items() if (s.name or k) == NOISE)
        out = {}
        for arg, s in specs.items():
            name = s.name or arg
            if name == NOISE:
                out[arg] = np.random.default_rng(0).standard_normal((n, latent)).astype(np.float32)
            elif name == CLASS_ID:
                out[arg] = np.arange(n, dtype=np.int64) % len(self.classes)
            else:
                out[arg] = np.array([self.classes[i % len(self.classes)].encode() for i in range(n)], dtype=object)
        return out

    # ------------------------------------------------------------ evaluation
    def evaluate(self, ctx, model: str) -> dict:
        from kfx.components.evaluation.generation import run

        return run(ctx, model, self)

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        g = ev["generation"]
        return (f"; {g['samples']:,} generated images (classes requested uniformly, seed {g['seed']}) scored by "
                f"the classifier {g['classifier']}")

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.generation import report_sections

        return report_sections(ev)
