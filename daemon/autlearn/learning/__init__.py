"""What is learnt: the sample store, the feature cache, the head, and the image and keyboard learners."""
