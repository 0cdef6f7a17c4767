// Command localcluster runs the operator for real on this machine: it starts
// a local kube-apiserver and etcd (built from source by hack/control-plane.sh),
// installs the CRDs, writes bin/kubeconfig, applies the samples and runs the
// manager command given after "--" in the foreground until Ctrl-C.
//
//	go run ./hack/localcluster -- bin/manager --allow-url-upstreams
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/circuitbreaker-io/operator/internal/controlplane"
	"github.com/circuitbreaker-io/operator/internal/testhosts"
)

func main() {
	kubeconfig := flag.String("write-kubeconfig", "bin/kubeconfig", "where to write the admin kubeconfig")
	samples := flag.String("samples", "config/samples", "directory of sample CircuitBreakers to apply in namespace default")
	testHosts := flag.Bool("test-hosts", true, "back the samples' Services with test hosts of its own (root only); "+
		"false for samples that bring their Services' EndpointSlices")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: localcluster [flags] -- MANAGER [ARGS...]")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *samples, *testHosts, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, samples string, testHosts bool, manager []string) error {
	fmt.Fprintln(os.Stderr, "localcluster: starting kube-apiserver and etcd (the first run builds them, about 10 minutes)")
	env, err := controlplane.Start()
	if err != nil {
		return err
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "localcluster: stopping the control plane:", err)
		}
	}()
	kubeconfig, err = filepath.Abs(kubeconfig)
	if err != nil {
		return err
	}
	if err := controlplane.WriteAdminKubeconfig(env, kubeconfig); err != nil {
		return err
	}
	c, err := client.New(env.Config, client.Options{})
	if err != nil {
		return err
	}
	var hosts *testhosts.Hosts
	why := fmt.Errorf("-test-hosts=false")
	if testHosts {
		if hosts, why = startTestHosts(); hosts != nil {
			defer hosts.Close()
		}
	}
	applied, err := applySamples(c, samples, hosts)
	if err != nil {
		return err
	}
	if hosts == nil && testHosts {
		fmt.Fprintf(os.Stderr, "localcluster: no test hosts (%v): the samples' Services have no endpoints, "+
			"so their breakers are Open (NoReadyEndpoints); run as root for two\n", why)
	}

	fmt.Fprintf(os.Stderr, `
localcluster: API server %s, CRDs installed, samples applied: %s
In another terminal:
  export KUBECONFIG=%s
  kubectl get cb
  kubectl annotate cb order-api circuitbreaker.io/reset="$(date +%%s%%N)" --overwrite
Proxy: http://localhost:8080/<namespace>/<name>/<path>   Dashboard and REST API: http://127.0.0.1:8082/
Press Ctrl-C to stop the manager and the control plane.

`, env.Config.Host, strings.Join(applied, ", "), kubeconfig)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := exec.Command(manager[0], append(manager[1:], "--kubeconfig", kubeconfig)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// A process group of its own: Ctrl-C in a terminal signals the whole
	// foreground group, and the manager would get it besides the SIGTERM
	// sent below; a second signal makes controller-runtime's handler exit
	// at once (status 1), skipping the drain. So only this sends it one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return fmt.Errorf("the manager exited: %v", err)
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			return fmt.Errorf("the manager did not stop cleanly: %w", err)
		}
		return nil
	}
}

// applySamples creates every object in dir's YAML files (except the
// kustomization) in namespace default.
func applySamples(c client.Client, dir string, hosts *testhosts.Hosts) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var applied []string
	for _, file := range files {
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		for _, doc := range strings.Split(string(data), "\n---") {
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			if obj.GetNamespace() == "" {
				obj.SetNamespace("default")
			}
			if err := createUpstreamService(c, obj, hosts); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			if err := c.Create(context.Background(), obj); err != nil {
				return nil, fmt.Errorf("applying %s: %w", file, err)
			}
			applied = append(applied, obj.GetName())
		}
	}
	return applied, nil
}

// localHosts is how many test hosts back each sample Service.
const localHosts = 2

// startTestHosts makes the local run's test hosts (a network namespace:
// root only) and serves HTTP on port 8080 of each, answering which host it
// is; nil, and why, when they cannot be made.
func startTestHosts() (*testhosts.Hosts, error) {
	hosts, err := testhosts.New(localHosts)
	if err != nil {
		return nil, err
	}
	for i := range localHosts {
		l, err := hosts.Listen(netip.AddrPortFrom(hosts.IPv4(i), 8080))
		if err != nil {
			hosts.Close()
			return nil, err
		}
		who := fmt.Sprintf("test host %d (%s)", i, hosts.IPv4(i))
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s: %s %s, Host %s\n", who, r.Method, r.URL.Path, r.Host)
		})}
		go func() { _ = srv.Serve(l) }()
	}
	return hosts, nil
}

// createUpstreamService creates the Service a sample breaker's upstream
// names, if it names one: a breaker forwards only to a Service that exists.
// With test hosts, an EndpointSlice gives it their addresses (port 8080,
// pods <service>-0, -1); without them it has no endpoints.
func createUpstreamService(c client.Client, obj *unstructured.Unstructured, hosts *testhosts.Hosts) error {
	name, _, _ := unstructured.NestedString(obj.Object, "spec", "upstream", "service", "name")
	// Parsed through JSON: a number is a float64.
	port, _, _ := unstructured.NestedFloat64(obj.Object, "spec", "upstream", "service", "port")
	if name == "" || port < 1 {
		return nil
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: obj.GetNamespace(), Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: int32(port)}}},
	}
	if err := c.Create(context.Background(), svc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s: %w", name, err)
	}
	if hosts == nil {
		return nil
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: obj.GetNamespace(), Name: name + "-local",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To(int32(8080))}},
	}
	for i := range localHosts {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{hosts.IPv4(i).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: obj.GetNamespace(), Name: fmt.Sprintf("%s-%d", name, i)},
		})
	}
	if err := c.Create(context.Background(), slice); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the EndpointSlice of %s: %w", name, err)
	}
	return nil
}
