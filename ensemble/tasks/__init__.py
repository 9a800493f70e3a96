"""Tasks: model + loss, as the training loop sees them."""
