"""XProNet's cross-modal prototypes: k-means initialisation of the shared prototype matrix."""
