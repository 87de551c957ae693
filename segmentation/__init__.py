"""ShapeNetPart part segmentation with a pre-trained Inter-MAE / Point-MAE encoder (SPEC §4-§6)."""
