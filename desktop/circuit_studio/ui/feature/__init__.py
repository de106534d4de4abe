"""The feature detail pane (`pane.FeaturePane`) and its dashboard widgets: example contexts
(`examples`), the activation histogram (`histogram`), logit effects (`logits`), collapsible sections
(`sections`), the box that builds a feature index (`index_builder`), and their look (`style`)."""
