# Photos of digits (issue 12): top-1 accuracy of the newest stored MNIST versions on the generated
# photo set, the per-image preprocessing cost, and a contact sheet of the hardest photos beside
# what the models saw. Results go to EVAL_PHOTOS_OUT (committed: results/photos/).
#   BENTOML_HOME=/path/to/store make eval-photos
#   make eval-photos EVAL_PHOTOS_ARGS='--mnist-http 10000'   # + MNIST test set: HTTP PNGs vs tensors
EVAL_PHOTOS_OUT  ?= results/photos
EVAL_PHOTOS_ARGS ?=
DEJAVU           := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

.PHONY: eval-photos photo-fonts

# The set renders a third of its digits with Debian's DejaVu fonts; without them it has none of
# those (and says so), so install them where they are missing.
photo-fonts:
	@test -f $(DEJAVU) || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y fonts-dejavu-core || \
		{ $$SUDO apt-get update && $$SUDO apt-get install -y fonts-dejavu-core; }; }

eval-photos: venv photo-fonts
	$(BIN)/python -m benchmarks.eval_photos --out $(EVAL_PHOTOS_OUT) $(EVAL_PHOTOS_ARGS)
