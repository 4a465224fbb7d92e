"""Pictures and pages of what a model learned: the HTML report, plots, galleries, Grad-CAM."""
