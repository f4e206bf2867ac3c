package auth

import "testing"

func TestRelativeRef(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"Practitioner/p1", "Practitioner/p1"},
		{"https://ehr.example/fhir/Practitioner/p1", "Practitioner/p1"},
		{"https://ehr.example/fhir/r4/PractitionerRole/r-1.a", "PractitionerRole/r-1.a"},
		{"http://localhost:8080/Patient/123", "Patient/123"},
		{"https://ehr.example/fhir/Patient/123/", "Patient/123"},
		{"https://ehr.example/fhir/Practitioner/p1/_history/3", "Practitioner/p1"},
		// Kept as is: not an absolute URL ending in /Type/id.
		{"https://ehr.example/fhir/Practitioner/p1?x=1", "https://ehr.example/fhir/Practitioner/p1?x=1"},
		{"https://ehr.example/fhir/Practitioner/p1#frag", "https://ehr.example/fhir/Practitioner/p1#frag"},
		{"https://ehr.example/p1", "https://ehr.example/p1"},
		{"https://ehr.example/fhir/practitioner/p1", "https://ehr.example/fhir/practitioner/p1"},
		{"https://ehr.example/fhir/Practitioner/p_1", "https://ehr.example/fhir/Practitioner/p_1"},
		{"urn:uuid:6e7a7c58-9ad5-4a7b-8c2f-1d0c2f3b9f11", "urn:uuid:6e7a7c58-9ad5-4a7b-8c2f-1d0c2f3b9f11"},
		{"someone@example.org", "someone@example.org"},
	}
	for _, test := range tests {
		if got := relativeRef(test.in); got != test.want {
			t.Errorf("relativeRef(%q) = %q, want %q", test.in, got, test.want)
		}
	}
}

func TestPatientRef(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"123", "Patient/123"},
		{"a-b.c", "Patient/a-b.c"},
		{"Patient/123", "Patient/123"},
		{"https://ehr.example/fhir/Patient/123", "Patient/123"},
		{"urn:uuid:x", "urn:uuid:x"},
	}
	for _, test := range tests {
		if got := patientRef(test.in); got != test.want {
			t.Errorf("patientRef(%q) = %q, want %q", test.in, got, test.want)
		}
	}
}
