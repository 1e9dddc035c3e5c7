"""The shipped models and data (LeNet-5 and its card, the MNIST calibration and test sets).

Installed as the package ``edgecnn.models`` so that they travel in the wheel as package data;
read them through :mod:`edgecnn.files.shipped`, never by a path into the source tree.
"""
