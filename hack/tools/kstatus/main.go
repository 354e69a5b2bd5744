// kstatus prints the health that sigs.k8s.io/cli-utils's kstatus library computes for
// Kubernetes objects: the same code Flux's health checks, `kubectl wait`-style tooling and
// Argo CD's kstatus-aware paths build on. It lets the operator's tests check the status the
// operator writes against the GitOps tools' own reading of it, not against a copy of the rules.
//
// Input: objects as JSON or YAML on stdin (one object, a `kind: List`, or several YAML
// documents), for example `kubectl get pf -n portal -o json | kstatus`.
// Output: one JSON object per line: {"kind", "namespace", "name", "status", "message"}, where
// status is one of kstatus's InProgress, Failed, Current, Terminating, NotFound or Unknown.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < objects.{json,yaml}   (e.g. kubectl get pf -o json | kstatus)")
		os.Exit(2)
	}
	objects, err := read(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for _, obj := range objects {
		result, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s %s/%s: %v\n", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
			os.Exit(1)
		}
		if err := out.Encode(line{
			Kind:      obj.GetKind(),
			Namespace: obj.GetNamespace(),
			Name:      obj.GetName(),
			Status:    result.Status.String(),
			Message:   result.Message,
		}); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
	}
}

// read decodes every object of the stream, unfolding lists (what `kubectl get -o json` prints).
// Each document goes through the unstructured JSON scheme so numbers such as
// metadata.generation stay integers, as kstatus expects.
func read(r io.Reader) ([]*unstructured.Unstructured, error) {
	decoder := yaml.NewYAMLOrJSONDecoder(bufio.NewReader(r), 4096)
	var objects []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objects, nil
			}
			return nil, fmt.Errorf("cannot decode the input: %w", err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
		if err != nil {
			return nil, fmt.Errorf("cannot read an object: %w", err)
		}
		switch obj := decoded.(type) {
		case *unstructured.UnstructuredList:
			for i := range obj.Items {
				objects = append(objects, &obj.Items[i])
			}
		case *unstructured.Unstructured:
			objects = append(objects, obj)
		default:
			return nil, fmt.Errorf("unexpected object of type %T", decoded)
		}
	}
}
