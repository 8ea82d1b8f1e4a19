"""What comes in: scanning and watching folders and media, decoding photos and text, augmentation."""
