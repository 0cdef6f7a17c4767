// Package controlplane starts the real kube-apiserver and etcd that the
// project builds from source (hack/control-plane.sh), with the project's CRDs
// installed: for envtest-based tests, the e2e tests and `make run-local`.
package controlplane

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
)

// RepoRoot is the root of the source tree.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Assets returns the directory of kube-apiserver and etcd, building them on
// first use when KUBEBUILDER_ASSETS is not set.
func Assets() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	cmd := exec.Command(filepath.Join(RepoRoot(), "hack", "control-plane.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building the control plane: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Scheme knows the built-in types and CircuitBreakers.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := cbv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Start starts an API server with the project's CRDs installed.
func Start() (*envtest.Environment, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme(),
	}
	if _, err := env.Start(); err != nil {
		return nil, fmt.Errorf("starting the API server: %w", err)
	}
	return env, nil
}

// WriteAdminKubeconfig writes a kubeconfig for a cluster administrator of env to path.
func WriteAdminKubeconfig(env *envtest.Environment, path string) error {
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding the admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	if _, err := clientcmd.Load(kubeconfig); err != nil {
		return fmt.Errorf("kubeconfig does not parse: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, kubeconfig, 0o600)
}
