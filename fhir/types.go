package fhir

import (
	"sort"
	"sync"

	cpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
)

var (
	typesOnce sync.Once
	typeSet   map[string]bool
	typeList  []string
)

func loadTypes() {
	typeSet = map[string]bool{}
	od := (&cpb.ContainedResource{}).ProtoReflect().Descriptor().Oneofs().ByName("oneof_resource")
	fs := od.Fields()
	for i := 0; i < fs.Len(); i++ {
		name := string(fs.Get(i).Message().Name())
		typeSet[name] = true
		typeList = append(typeList, name)
	}
	sort.Strings(typeList)
}

// ResourceTypes returns every R4 resource type, sorted; it is read from
// google/fhir's ContainedResource so it is exactly what Parse accepts.
func ResourceTypes() []string {
	typesOnce.Do(loadTypes)
	return typeList
}

// IsResourceType reports whether t is an R4 resource type name.
func IsResourceType(t string) bool {
	typesOnce.Do(loadTypes)
	return typeSet[t]
}
