"""gan: class-conditional DCGAN for the generation task (models/tasks/generation.py).

Generator: noise [latent_dim] and the class's embedding -> Dense to an (H/4, W/4, 2*filters)
map -> BatchNorm, LeakyReLU -> Conv2DTranspose (stride 2, `filters`) -> BatchNorm, LeakyReLU ->
Conv2DTranspose (stride 2, the image's channels), tanh, rescaled into the transformed pixel
scale (the task's `pixel_range`: pixels 0..255 as the model input sees them).
Discriminator: the image with the class's embedding as one more channel -> Conv2D (stride 2,
`filters`) -> LeakyReLU, Dropout -> Conv2D (stride 2, 2*filters) -> LeakyReLU, Dropout -> Dense(1)
real/fake logit, and Dense(classes) class logits: an auxiliary classifier (AC-GAN, Odena et al.
2017) whose cross-entropy, weighted by `class_loss_weight`, the discriminator minimises on real
images and the generator on its images of the requested class (0: a plain conditional DCGAN).
Without it the generator learns to ignore the class for many epochs on 4,000 MNIST digits. Trained as Radford et al. (2015): Adam with beta_1 0.5, both networks updated from the
same forward pass of each batch, one-sided label smoothing of the real images (`label_smoothing`).

`build` returns `ConditionalGAN`, a Keras 3 Model (TensorFlow backend) with its own
`train_step` / `test_step` (logs `d_loss` and `g_loss`; on the eval split `val_g_loss` is the
generator's loss against the discriminator there), so train's plain `model.fit` with its
callbacks (backup, TensorBoard, early stopping) trains it; the `compile` hook gives both
optimizers. Calling the model runs the averaged generator, `model([noise, class_index])`: an
exponential moving average (`ema`) of the generator's weights over the last steps, smoother than
the last step's (0: the last step's weights).
"""
from __future__ import annotations

from kfx.models.space import Choice, Float

SPACE = (
    Float("learning_rate", 5e-5, 1e-3, default=2e-4, sampling="log"),  # the generator's
    Float("discriminator_learning_rate", 5e-5, 1e-3, default=2e-4, sampling="log"),
    Float("beta_1", 0.0, 0.9, default=0.5),
    Choice("latent_dim", (32, 64, 100, 128), default=64),
    Choice("filters", (16, 32, 64, 128), default=32),
    Choice("embedding_dim", (8, 16, 32, 50), default=16),
    Float("dropout", 0.0, 0.5, default=0.3),
    Float("label_smoothing", 0.0, 0.3, default=0.1),
    Float("class_loss_weight", 0.0, 4.0, default=2.0),
    Float("ema", 0.0, 0.999, default=0.98),
)


def _generator(keras, shape: list[int], classes: int, hp: dict, pixel_range: tuple[float, float]):
    h, w, c = shape
    f = hp["filters"]
    noise = keras.Input((hp["latent_dim"],), name="noise")
    label = keras.Input((), dtype="int64", name="class_id")
    emb = keras.layers.Embedding(classes, hp["embedding_dim"], name="g_class_embedding")(label)
    x = keras.layers.Concatenate(name="g_concat")([noise, emb])
    x = keras.layers.Dense(h // 4 * w // 4 * 2 * f, use_bias=False, name="g_dense")(x)
    x = keras.layers.BatchNormalization(name="g_bn0")(x)
    x = keras.layers.LeakyReLU(0.2, name="g_act0")(x)
    x = keras.layers.Reshape((h // 4, w // 4, 2 * f), name="g_reshape")(x)
    x = keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=False, name="g_up1")(x)
    x = keras.layers.BatchNormalization(name="g_bn1")(x)
    x = keras.layers.LeakyReLU(0.2, name="g_act1")(x)
    x = keras.layers.Conv2DTranspose(c, 4, strides=2, padding="same", activation="tanh", name="g_up2")(x)
    lo, hi = pixel_range
    # tanh's [-1, 1] onto the transformed scale of pixels 0..255, where the real images live.
    x = keras.layers.Rescaling((hi - lo) / 2, offset=(hi + lo) / 2, name="g_pixels")(x)
    return keras.Model([noise, label], x, name="generator")


def _discriminator(keras, shape: list[int], classes: int, hp: dict):
    h, w, c = shape
    f = hp["filters"]
    image = keras.Input(tuple(shape), name="image")
    label = keras.Input((), dtype="int64", name="class_id")
    emb = keras.layers.Embedding(classes, hp["embedding_dim"], name="d_class_embedding")(label)
    plane = keras.layers.Reshape((h, w, 1), name="d_class_plane")(keras.layers.Dense(h * w, name="d_class_dense")(emb))
    x = keras.layers.Concatenate(name="d_concat")([image, plane])
    for i, filters in enumerate((f, 2 * f)):
        x = keras.layers.Conv2D(filters, 4, strides=2, padding="same", name=f"d_conv{i}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"d_act{i}")(x)
        x = keras.layers.Dropout(hp["dropout"], name=f"d_dropout{i}")(x)
    x = keras.layers.Flatten(name="d_flat")(x)
    return keras.Model([image, label], [keras.layers.Dense(1, name="d_logit")(x),
                                        keras.layers.Dense(classes, name="d_class_logits")(x)], name="discriminator")


def build(features: dict[str, dict], task: dict, hp: dict):
    """The conditional GAN for the task's image feature, sized by `hp` (SPACE's names).

    Returns:
        A built ConditionalGAN (uncompiled; see `compile`).

    Raises:
        ValueError: a task other than generation, or an image whose height or width is not a
            multiple of 4 (two stride-2 upsamplings).
    """
    import keras

    from kfx.models import tasks

    t = tasks.of(task)
    if t.NAME != "generation":
        raise ValueError(f"model 'gan' learns the generation task; the transform's task is {t.NAME!r}")
    shape = t.image["shape"]
    if shape[0] % 4 or shape[1] % 4:
        raise ValueError(f"model 'gan': image height and width must be multiples of 4; got image_shape {shape}")
    classes = len(t.classes)
    model = ConditionalGAN(_generator(keras, shape, classes, hp, t.pixel_range()),
                           _discriminator(keras, shape, classes, hp), t.image["output"], hp)
    model([keras.ops.zeros((1, hp["latent_dim"])), keras.ops.zeros((1,), "int64")])  # built: exportable
    return model


def compile(model, task: dict, hp: dict) -> None:
    """Adam for each network (beta_1 from hp: DCGAN's 0.5 by default)."""
    import keras

    model.compile(d_optimizer=keras.optimizers.Adam(hp["discriminator_learning_rate"], beta_1=hp["beta_1"]),
                  g_optimizer=keras.optimizers.Adam(hp["learning_rate"], beta_1=hp["beta_1"]))


_CLASS = []


def _gan_class():
    if _CLASS:
        return _CLASS[0]
    import keras
    import tensorflow as tf

    class ConditionalGAN(keras.Model):
        """Generator and discriminator trained adversarially; calling it runs the generator."""

        def __init__(self, generator, discriminator, image_key: str, hp: dict, **kwargs):
            super().__init__(**kwargs)
            self.generator, self.discriminator = generator, discriminator
            self.image_key, self.latent_dim = image_key, int(hp["latent_dim"])
            self.smoothing, self.class_weight = float(hp["label_smoothing"]), float(hp["class_loss_weight"])
            self.seed = keras.random.SeedGenerator(1337)
            # The served generator: an exponential moving average of the trained one's weights.
            self.ema, self.average = float(hp["ema"]), keras.models.clone_model(generator)
            self.average.set_weights(generator.get_weights())
            self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
            self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

        def call(self, inputs, training=False):
            return self.average(inputs, training=False)

        def compile(self, d_optimizer, g_optimizer):
            super().compile()
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

        @property
        def metrics(self):
            return [self.d_loss_tracker, self.g_loss_tracker]

        def adversarial_losses(self, data, training: bool):
            features, labels = data
            real = tf.cast(features[self.image_key], tf.float32)
            labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
            n = tf.shape(real)[0]
            noise = keras.random.normal((n, self.latent_dim), seed=self.seed)
            fake = self.generator([noise, labels], training=training)
            real_logit, real_class = self.discriminator([real, labels], training=training)
            fake_logit, fake_class = self.discriminator([fake, labels], training=training)
            bce = lambda y, logit: tf.reduce_mean(  # noqa: E731
                tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit))
            ce = lambda logits: tf.reduce_mean(  # noqa: E731
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            # AC-GAN: the discriminator learns the class of real images; the generator is
            # rewarded when its image is recognised as the class it was asked for.
            d_loss = (bce(tf.fill(tf.shape(real_logit), 1.0 - self.smoothing), real_logit)
                      + bce(tf.zeros_like(fake_logit), fake_logit) + self.class_weight * ce(real_class))
            g_loss = bce(tf.ones_like(fake_logit), fake_logit) + self.class_weight * ce(fake_class)
            return d_loss, g_loss

        def train_step(self, data):
            # One forward pass, both networks updated from it (TensorFlow's DCGAN tutorial): a
            # third less compute than alternating passes, and as stable on MNIST.
            with tf.GradientTape() as d_tape, tf.GradientTape() as g_tape:
                d_loss, g_loss = self.adversarial_losses(data, True)
            d_vars, g_vars = self.discriminator.trainable_weights, self.generator.trainable_weights
            self.d_optimizer.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
            self.g_optimizer.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars))
            for average, w in zip(self.average.weights, self.generator.weights):  # BatchNorm statistics too
                average.assign(self.ema * average + (1.0 - self.ema) * w)
            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            d_loss, g_loss = self.adversarial_losses(data, False)
            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            return {m.name: m.result() for m in self.metrics}

    _CLASS.append(ConditionalGAN)
    return ConditionalGAN


def ConditionalGAN(*args, **kwargs):  # noqa: N802 - the class, made on first use
    """The Keras model class (see module doc); built lazily so importing this module is cheap."""
    return _gan_class()(*args, **kwargs)
