# Two commands on a fresh machine with Python 3.11:
#   make demo   build the example model, serve it locally, send predictions, show metrics
#   make test   the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test bench model clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU wheel, never the CUDA packages.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[server,operator,test]'
	touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/python examples/build_model.py --out examples/model

demo: model
	$(BIN)/python examples/quickstart.py --model-dir examples/model
	@echo; echo "What the operator would apply for examples/quickstart-cpu.yaml (kubectl-modelship render):"
	@$(BIN)/kubectl-modelship render -f examples/quickstart-cpu.yaml > examples/model/quickstart-cpu.rendered.yaml
	@grep -E '^kind:|^  name:' examples/model/quickstart-cpu.rendered.yaml | paste - - | sed 's/^/  /'
	@echo "  (full manifests: examples/model/quickstart-cpu.rendered.yaml)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: model
	$(BIN)/python benchmarks/bench_server.py --model-dir examples/model

clean:
	rm -rf $(VENV) examples/model .pytest_cache

# Packaging (issue 5). kind-e2e needs Docker, kind, kubectl and helm on the machine.
.PHONY: crd api-docs chart-lint kind-e2e

# The CRD is generated from the typed models (operator/modelship_operator/api/v1alpha1.py);
# charts/modelship/crds is a symlink to crds/, the package generates it at run time.
crd: install
	$(BIN)/python -m modelship_operator.api.crdgen > crds/modeldeployments.modelship.dev.yaml

api-docs: crd
	$(BIN)/python scripts/gen_api_reference.py

chart-lint: install
	$(BIN)/python -m pytest -q tests/packaging/test_chart.py tests/packaging/test_alerts.py tests/packaging/test_dashboard.py

kind-e2e: install
	PYTHON=$(abspath $(BIN)/python) hack/kind-e2e.sh
