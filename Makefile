# SE-VGG11 on GTSRB. `make train` sets everything up and runs the main job;
# `make test` runs the tests. Both install what they need into .venv, once.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The install stamp is keyed on pyproject.toml: a second run installs nothing.
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

DATA    ?= data/gtsrb28.h5
SOURCE  ?=
EPOCHS  ?= 10
PRESET  ?= seed
RUN     ?= runs/$(PRESET)
export GRADIO_ANALYTICS_ENABLED := False
export RAY_USAGE_STATS_ENABLED  := 0

.PHONY: venv pack train resume test tensorboard clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision are pinned exactly in pyproject.toml (this machine serves them from disk)
	$(BIN)/python -m pip install -e ".[study,ui,dev]"
	rm -f $(VENV)/.installed-*
	touch $@

$(DATA): | $(STAMP)
	$(BIN)/gtsrb pack $(SOURCE) --out $(DATA)

pack: $(DATA)

# The main job: pack the archive (once) and train the seed preset.
train: $(DATA)
	$(BIN)/gtsrb train --data $(DATA) --preset $(PRESET) --epochs $(EPOCHS) --out $(RUN) \
		$(if $(wildcard $(RUN)/last.pt),--resume,)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1 --port 6006

clean-venv:
	rm -rf $(VENV)
