# The index of commands. The two that matter: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV := $(VENV)-checkov/bin/checkov

.PHONY: run test test-unit install system lint format bench assets clean release deploy deploy-local instance-test audit

run: install ## Start moto (local AWS), the API, a worker and Flower; Ctrl-C stops all
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

test-unit: install ## The unit tier: every test that needs no server, database server, FFmpeg or worker
	$(BIN)/python -m pytest -m unit -n 2 --dist worksteal

test: install ## Both tiers in two processes (pytest-xdist), with branch coverage (its floor: pyproject.toml)
	@deploy/install_system.sh --browser
	$(BIN)/python -m pytest -n 2 --dist worksteal --cov --cov-report=term:skip-covered --durations=20

install: $(STAMP) system

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .  # the `videoproc` command
	touch $(STAMP)

system: ## FFmpeg and nginx (apt-get when root)
	@deploy/install_system.sh

lint: install $(CHECKOV) ## Lint, check formatting, types and the import layers, check the CloudFormation template (cfn-lint, checkov; as written and as deployed) and its reference in docs/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	bash -n deploy/bootstrap.sh
	$(BIN)/python -m deploy.stack render --out build/cloudformation.yaml
	$(BIN)/cfn-lint deploy/cloudformation.yaml build/cloudformation.yaml
	$(CHECKOV) --file build/cloudformation.yaml --framework cloudformation --compact --quiet --skip-download
	$(BIN)/python -m deploy.docs --check
	$(BIN)/python -m config.table --check

audit: install $(VENV)-audit/bin/pip-audit ## pip-audit on the release's pinned requirements; report in docs/security.md (says so when the advisory database can't be reached)
	$(BIN)/python -m deploy.audit --pip-audit $(VENV)-audit/bin/pip-audit

$(VENV)-audit/bin/pip-audit: requirements-audit.txt
	$(PYTHON) -m venv $(VENV)-audit
	$(VENV)-audit/bin/python -m pip install --quiet -r requirements-audit.txt
	touch $(VENV)-audit/bin/pip-audit

$(CHECKOV): requirements-checkov.txt
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV)

release: install ## Build dist/videoproc-<version>.tar.gz: the wheel and the pinned requirements
	$(BIN)/python -m deploy.release

deploy: install ## Create or update stack STACK= on AWS (PARAMETERS=file.json), roll out the release, wait
	@test -n "$(STACK)" || { echo "usage: make deploy STACK=name [PARAMETERS=parameters.json]" >&2; exit 1; }
	$(BIN)/python -m deploy.stack deploy --stack $(STACK) $(if $(PARAMETERS),--parameters $(PARAMETERS))

deploy-local: install ## The same into a moto server of its own, then every role run under its IAM enforcement with one real upload (STACK=videoproc-local)
	$(BIN)/python -m deploy.stack deploy-local --stack $(or $(STACK),videoproc-local)

instance-test: install ## Boot a worker on clean Debian 12 roots (mmdebstrap, bubblewrap, systemd-nspawn; as root) as user data would; time its first job
	$(BIN)/python -m deploy.instance_test --kind all

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Measure against FFmpeg's floor, the job, a backlog, uploads and load; writes docs/benchmarks.md (QUICK=1: a smoke run, docs untouched)
	$(BIN)/python -m bench.pipeline $(if $(QUICK),--quick)
	$(BIN)/python -m bench.job $(if $(QUICK),--quick)
	$(BIN)/python -m bench.concurrency $(if $(QUICK),--quick)
	$(BIN)/python -m bench.uploads $(if $(QUICK),--quick)
	$(BIN)/python -m bench.load $(if $(QUICK),--quick)
	$(BIN)/python -m bench.webhooks $(if $(QUICK),--quick)
	$(BIN)/python -m bench.optimize $(if $(QUICK),--quick)

assets: ## Re-render the logo and bumper cards
	assets/make_assets.sh

clean:
	rm -rf $(VENV) $(VENV)-checkov instance .pytest_cache .ruff_cache
