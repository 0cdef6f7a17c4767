# Image URL to use all building/pushing image targets
IMG ?= ghcr.io/circuitbreaker-io/circuit-breaker-operator:v0.1.0

# Setting SHELL to bash allows bash commands to be executed by recipes.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

GOBIN ?= $(shell go env GOPATH)/bin
LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUBECTL ?= kubectl
KUSTOMIZE_VERSION ?= v5.7.1
KUSTOMIZE ?= $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM_VERSION ?= v4.3.2
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
# Where the locally built kube-apiserver and etcd live (see hack/control-plane.sh).
ASSETS = $(shell hack/control-plane.sh)
TEST_TIMEOUT ?= 20m

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Display this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and RBAC from the API types and markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet, including the e2e, fault and Helm chart packages.
	go vet -tags e2e,faults,helm ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint (.golangci.yml), e2e, fault and Helm chart tests included.
	$(GOLANGCI_LINT) run ./...

.PHONY: lint-fix
lint-fix: golangci-lint ## Run golangci-lint and apply its fixes.
	$(GOLANGCI_LINT) run --fix ./...

.PHONY: tidy
tidy: ## Run go mod tidy.
	go mod tidy

.PHONY: control-plane
control-plane: ## Build kube-apiserver and etcd from the Go module proxy (cached outside the clone).
	@hack/control-plane.sh

# The packages whose tests need no API server: every one but the envtests
# of internal/controller and internal/cbctl (the kubectl cb plugin), the e2e
# and the fault tests.
UNIT_PKGS = $(shell go list ./... | grep -v -e /internal/controller$$ -e /internal/cbctl$$ -e /internal/metricsauth$$ -e /test/e2e$$ -e /test/faults$$)

.PHONY: test-unit
test-unit: fmt vet ## Run the unit tests (with -race): no API server, seconds.
	go test -race -count 1 $(UNIT_PKGS)

.PHONY: test
test: manifests generate fmt vet ## Run unit and envtest tests (with -race) on a locally built API server.
	KUBEBUILDER_ASSETS="$(ASSETS)" go test -race -count 1 -timeout $(TEST_TIMEOUT) ./... -coverprofile cover.out

.PHONY: test-monitoring
test-monitoring: ## Run promtool's unit tests of the alert rules and check every dashboard query (needs promtool: apt-get install prometheus).
	@command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus"; exit 1; }
	go test -race -count 1 -v ./test/monitoring/

.PHONY: test-e2e
test-e2e: build build-installer ## Run the end-to-end tests: the real manager binary and kubectl on a local control plane.
	mkdir -p $(LOCALBIN)/e2e-output
	KUBEBUILDER_ASSETS="$(ASSETS)" go test -tags e2e -race -timeout 15m -count 1 -v ./test/e2e/ -artifacts -outputdir $(LOCALBIN)/e2e-output

.PHONY: test-faults
test-faults: build ## Run the fault tests: the real manager under load through SIGTERM, SIGKILL, a killed API server, a stopped etcd, churn and a hanging webhook.
	KUBEBUILDER_ASSETS="$(ASSETS)" go test -tags faults -race -count 1 -timeout 15m -v ./test/faults/

.PHONY: test-helm
test-helm: helm helm-chart ## Test the Helm chart: helm lint, the default render against dist/install.yaml object by object, server-side apply and helm install/upgrade/uninstall on a local API server.
	HELM=$(HELM) KUSTOMIZE=$(KUSTOMIZE) KUBEBUILDER_ASSETS="$(ASSETS)" go test -tags helm -count 1 -timeout 10m -v ./test/helm/

.PHONY: bench
bench: ## Run the benchmarks of docs/benchmarks.md in interleaved rounds, with benchstat.
	hack/bench.sh

.PHONY: bench-proxy
bench-proxy: ## The proxy hop under wrk against separate processes: bare ReverseProxy (A/A), nginx, the real manager (docs/benchmarks.md).
	hack/bench-proxy.sh

.PHONY: bench-latency
bench-latency: ## The latency the proxy hop adds at 1,000 req/s, open loop: direct, bare ReverseProxy, nginx, the real manager, in interleaved rounds (docs/benchmarks.md).
	hack/bench-latency.sh

.PHONY: bench-grpc
bench-grpc: ## gRPC unary calls through the proxy (h2c both ways, by the exposed name) against a bare ReverseProxy, separate processes (docs/benchmarks.md).
	hack/bench-grpc.sh

N ?= 1000
.PHONY: bench-scale
bench-scale: build ## N CircuitBreakers on a local control plane: time to ready, to every status, write rate, RSS, idle CPU, then busy (docs/benchmarks.md); SERVICES=1 puts each on a Service of its own.
	go run ./hack/bench-scale -n $(N) $(if $(SERVICES),-services)

DURATION ?= 10m
.PHONY: soak
soak: build ## The real manager for DURATION under steady traffic, 10 of 100 breakers flapping, a scrape every 15 s: RSS, heap, goroutines, fds flat? (docs/benchmarks.md; not in CI).
	go run ./hack/soak -duration $(DURATION)

.PHONY: verify
verify: tidy manifests generate fmt build-installer helm-chart ## Regenerate everything (go.mod included) and fail if the tree changed.
	@git diff --exit-code -- . || { echo "generated files are out of date: run 'make tidy manifests generate fmt build-installer helm-chart' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- api config internal cmd dist)" || { git status --porcelain --untracked-files=all -- api config internal cmd dist; echo "untracked generated files: commit them"; exit 1; }

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager binary and the kubectl cb plugin.
	go build -o bin/manager ./cmd/manager
	go build -o bin/kubectl-cb ./cmd/kubectl-cb

.PHONY: run
run: manifests generate fmt vet ## Run the manager against the cluster of your kubeconfig.
	go run ./cmd/manager

.PHONY: run-local
run-local: build ## Start a local kube-apiserver and etcd, install the CRDs and samples, and run the manager.
	go run ./hack/localcluster -- bin/manager --allow-url-upstreams

.PHONY: docker-build
docker-build: ## Build the manager image (needs a Docker engine).
	docker build -t $(IMG) .

.PHONY: build-installer
build-installer: manifests kustomize ## Write dist/install.yaml (namespace, CRD, RBAC, manager) for image IMG, and the optional dist/network-policy.yaml.
	mkdir -p dist
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/install > dist/install.yaml
	$(KUSTOMIZE) build config/network-policy > dist/network-policy.yaml

.PHONY: helm-chart
helm-chart: build-installer ## Write the Helm chart dist/chart from config/ (the kustomize builds of dist/install.yaml and the optional overlays).
	go run ./hack/helmchart -kustomize $(KUSTOMIZE) -out dist/chart

##@ Deployment

.PHONY: install
install: manifests ## Install the CRDs into the cluster of your kubeconfig.
	$(KUBECTL) apply -k config/crd

.PHONY: uninstall
uninstall: manifests ## Uninstall the CRDs from the cluster of your kubeconfig.
	$(KUBECTL) delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: build-installer ## Deploy the operator to the cluster of your kubeconfig.
	$(KUBECTL) apply -f dist/install.yaml

.PHONY: undeploy
undeploy: ## Remove the operator from the cluster of your kubeconfig.
	$(KUBECTL) delete --ignore-not-found -f dist/install.yaml

##@ Tools

.PHONY: kustomize
kustomize: $(KUSTOMIZE)
$(KUSTOMIZE):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	mv $(LOCALBIN)/kustomize $(KUSTOMIZE)

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT)
$(GOLANGCI_LINT):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $(GOLANGCI_LINT)

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)
$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)

.PHONY: helm
helm: $(HELM)
$(HELM):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)
	mv $(LOCALBIN)/helm $(HELM)
