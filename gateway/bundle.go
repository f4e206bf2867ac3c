package gateway

import (
	"net/http"

	"github.com/fhirgate/fhirgate/fhir"
)

func (s *Server) bundle(w http.ResponseWriter, r *http.Request) error {
	return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "Bundles are not available yet")
}
