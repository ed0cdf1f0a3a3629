"""Neural network building blocks shared by stages: image and text encoders, report generators."""
