"""big_vision_like: train and evaluate vision and image-text models with JAX.

Importing the package hides TensorFlow's C++ INFO lines (CPU feature and
oneDNN notices, printed on every start of every process) unless the user set
TF_CPP_MIN_LOG_LEVEL: its warnings and errors still show. It must happen
here, before any module imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
