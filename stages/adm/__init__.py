"""EKAGen's diagnosis bot and Aggregate Discriminative attention Masks (ADM).

classifier  the 14-label image classifier: training, thresholds, checkpoint, `predict_labels`
gradcam     batched Grad-CAM on the last feature grid and the mask rule
masks       adm.h5: every image's probabilities, CAM peaks and aggregate mask
enhance     the enhancement rule later training applies to images with their masks
metrics     AUROC, pointing game and IoU against the demo's true regions, overlay pictures
"""
