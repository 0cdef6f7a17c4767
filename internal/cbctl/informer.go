package cbctl

import (
	"context"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// followBreakers lists the breakers of client (only the one called name,
// if set), hands them to listed sorted by namespace and name, then hands
// each later change to changed, until a callback says done (nil), returns
// an error, or ctx ends (ctx.Err()).
//
// It rides on an informer, as `kubectl wait` does, so that an expired watch
// or a lost connection re-lists instead of ending the command; a change is
// handed over only if it carries a resourceVersion not yet seen, so the
// initial list and a re-list of unchanged objects show nothing twice.
func followBreakers(ctx context.Context, client dynamic.ResourceInterface, name string,
	listed func([]*unstructured.Unstructured) (done bool, err error),
	changed func(watch.EventType, *unstructured.Unstructured) (done bool, err error),
) error {
	selector := func(opts *metav1.ListOptions) {
		if name != "" {
			opts.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			selector(&opts)
			return client.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			selector(&opts)
			return client.Watch(ctx, opts)
		},
	}
	seen := map[types.UID]string{}
	_, err := watchtools.UntilWithSync(ctx, lw, &unstructured.Unstructured{},
		func(store cache.Store) (bool, error) {
			var breakers []*unstructured.Unstructured
			for _, obj := range store.List() {
				u := obj.(*unstructured.Unstructured)
				seen[u.GetUID()] = u.GetResourceVersion()
				breakers = append(breakers, u)
			}
			sort.Slice(breakers, func(i, j int) bool {
				if breakers[i].GetNamespace() != breakers[j].GetNamespace() {
					return breakers[i].GetNamespace() < breakers[j].GetNamespace()
				}
				return breakers[i].GetName() < breakers[j].GetName()
			})
			return listed(breakers)
		},
		func(event watch.Event) (bool, error) {
			u, ok := event.Object.(*unstructured.Unstructured)
			if !ok {
				return false, nil
			}
			if event.Type == watch.Deleted {
				delete(seen, u.GetUID())
				return changed(event.Type, u)
			}
			if seen[u.GetUID()] == u.GetResourceVersion() {
				return false, nil
			}
			seen[u.GetUID()] = u.GetResourceVersion()
			return changed(event.Type, u)
		})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
