package gateway

import (
	"net/http"

	"github.com/fhirgate/fhirgate/fhir"
)

// Bulk Data Access $export: being built.

var errExportTODO = httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "$export is not available yet")

func (s *Server) exportKickoff(w http.ResponseWriter, r *http.Request) error { return errExportTODO }
func (s *Server) exportStatus(w http.ResponseWriter, r *http.Request) error  { return errExportTODO }
func (s *Server) exportCancel(w http.ResponseWriter, r *http.Request) error  { return errExportTODO }
func (s *Server) exportFile(w http.ResponseWriter, r *http.Request) error    { return errExportTODO }
