"""Training worker of the surface defect detection example (one per edge).

Mirrors Sedna's ``examples/federated_learning/surface_defect_detection/training_worker/train.py``
line by line; only the imports change (our ``edge_trainer`` replaces ``sedna``), plus two marked
fixes and a note on FedProx's ``mu``. Run it with the same parameters Sedna's controller would pass (``TRAIN_DATASET_URL``,
``epochs``, ``batch_size``, ``learning_rate``... as environment variables).
"""

import os

import numpy as np
from interface import Estimator

from edge_trainer import BaseConfig, Context, FederatedLearning, TxtDataParse, load_image


def image_process(line):
    file_path, label = line.split(",")
    original_dataset_url = BaseConfig.original_dataset_url or BaseConfig.train_dataset_url
    root_path = os.path.dirname(original_dataset_url)
    file_path = os.path.join(root_path, file_path)
    # Sedna: keras load_img(file_path).resize((128, 128)) then img_to_array / 255.0. load_image
    # is that exact pipeline (RGB conversion, PIL's default resample, float32 in [0, 1]) without
    # importing Keras' preprocessing module, which Keras 3 no longer ships in the same place.
    data = load_image(file_path, (128, 128))
    label = [0, 1] if int(label) == 0 else [1, 0]
    data = np.array(data)
    label = np.array(label)
    return [data, label]


def main():
    # load dataset.
    train_dataset_url = BaseConfig.train_dataset_url
    test_dataset_url = BaseConfig.test_dataset_url

    train_data = TxtDataParse(data_type="train", func=image_process)
    train_data.parse(train_dataset_url)

    # Sedna: data_type="test", which makes TxtDataParse drop the labels, so a configured
    # TEST_DATASET_URL would crash Keras' validation. "eval" keeps them.
    valid_data = TxtDataParse(data_type="eval", func=image_process)
    valid_data.parse(test_dataset_url)

    epochs = int(Context.get_parameters("epochs", 1))
    batch_size = int(Context.get_parameters("batch_size", 1))
    aggregation_algorithm = Context.get_parameters("aggregation_algorithm", "FedAvg")
    learning_rate = float(Context.get_parameters("learning_rate", 0.001))
    validation_split = float(Context.get_parameters("validation_split", 0.2))

    # FedProx (not in Sedna): the job's `mu` parameter needs nothing here. FederatedLearning reads it
    # and passes global_weights= and mu= to Estimator.train, which adds the proximal term.
    fl_model = FederatedLearning(estimator=Estimator, aggregation=aggregation_algorithm)

    train_jobs = fl_model.train(
        train_data=train_data,
        # Sedna passes the (usually empty) parse object; an empty one is falsy there, so the
        # estimator fell back to validation_split. Passing None says the same thing explicitly.
        valid_data=valid_data if len(valid_data) else None,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_split=validation_split,
    )

    return train_jobs


if __name__ == "__main__":
    main()
