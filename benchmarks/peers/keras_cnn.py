"""Peer (b): Keras with image_dataset_from_directory and the classic MNIST-study CNN.

Usage: keras_cnn.py TRAIN_DIR TEST_DIR EPOCHS THREADS. Prints one JSON line.
"""

import json
import os
import sys
import time

t_start = time.perf_counter()
train_dir, test_dir, epochs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
tf.keras.utils.set_random_seed(0)
kw = dict(color_mode="grayscale", image_size=(28, 28), batch_size=128)
train = tf.keras.utils.image_dataset_from_directory(train_dir, shuffle=True, seed=0, **kw)
test = tf.keras.utils.image_dataset_from_directory(test_dir, shuffle=False, **kw)
layers = tf.keras.layers


def pair(filters):
    return [layers.Conv2D(filters, 3, padding="same", activation="relu"), layers.BatchNormalization(),
            layers.Conv2D(filters, 3, padding="same", activation="relu"), layers.BatchNormalization(),
            layers.MaxPooling2D(), layers.Dropout(0.3)]


model = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), layers.Rescaling(1 / 255.0), *pair(32), *pair(64), *pair(128),
                             layers.Flatten(),
                             layers.Dense(512, activation="relu"), layers.BatchNormalization(), layers.Dropout(0.3),
                             layers.Dense(512, activation="relu"), layers.BatchNormalization(), layers.Dropout(0.3),
                             layers.Dense(len(train.class_names), activation="softmax")])
model.compile(optimizer=tf.keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, epochs=epochs, verbose=0)
_, accuracy = model.evaluate(test, verbose=0)
print(json.dumps({"tool": "keras", "wall_s": round(time.perf_counter() - t_start, 1),
                  "test_accuracy": round(float(accuracy), 4), "parameters": int(model.count_params())}))
