"""Feature interpretation: the feature atlas, LLM backends, and the ComSem protocol."""
