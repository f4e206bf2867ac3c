package fhir

import "sort"

// ParamType is a search parameter type (R4 search.html).
type ParamType string

// The parameter types the server implements.
const (
	TypeToken     ParamType = "token"
	TypeString    ParamType = "string"
	TypeDate      ParamType = "date"
	TypeReference ParamType = "reference"
	TypeQuantity  ParamType = "quantity"
	TypeNumber    ParamType = "number"
	TypeURI       ParamType = "uri"
)

// SearchParam defines one search parameter of a resource type.
//
// Paths are simple element paths from the resource root: elements joined by
// dots; an element of a choice type is named without [x] ("effective"
// matches effectiveDateTime and effectivePeriod); "telecom[system=phone]"
// keeps only elements whose member has that value; "subject@Patient" keeps
// only references to that type.
type SearchParam struct {
	Name        string
	Type        ParamType
	Paths       []string
	Description string
	// CodeSystem is the system implied for plain `code` values (R4 binds
	// them to one code system), so `system|code` searches match them.
	CodeSystem string
	// SameAs names a parameter of the same type and paths whose index
	// terms this one looks up; its own are not stored.
	SameAs string
	// NoSystemTerms leaves out a token parameter's system-only index terms
	// (what "system|" queries look up): its values all share one or a few
	// systems, so such a term would select (nearly) every resource. Those
	// queries scan the type instead. Coded parameters have it.
	NoSystemTerms bool
	// Prefixes, when set, replaces PrefixRunes for a string parameter:
	// the prefix lengths its values are indexed by.
	Prefixes []int

	compiled []*compiledPath // Paths, compiled by p
}

func sameAs(sp *SearchParam, name string) *SearchParam {
	sp.SameAs = name
	return sp
}

func coded(sp *SearchParam, system string) *SearchParam {
	sp.CodeSystem = system
	sp.NoSystemTerms = true // every value has system
	return sp
}

func noSystemTerms(sp *SearchParam) *SearchParam {
	sp.NoSystemTerms = true
	return sp
}

func indexPrefixes(sp *SearchParam, runes ...int) *SearchParam {
	sp.Prefixes = runes
	return sp
}

// Params maps a resource type to its search parameters by name.
type Params map[string]map[string]*SearchParam

func p(name string, t ParamType, desc string, paths ...string) *SearchParam {
	sp := &SearchParam{Name: name, Type: t, Paths: paths, Description: desc}
	for _, path := range paths {
		sp.compiled = append(sp.compiled, compilePath(path))
	}
	return sp
}

var nameParams = func(prefix string) []*SearchParam {
	return []*SearchParam{
		p("name", TypeString, "A portion of any part of the name", "name"),
		p("family", TypeString, "A portion of the family name", "name.family"),
		p("given", TypeString, "A portion of a given name", "name.given"),
		sameAs(p("phonetic", TypeString, "A portion of the name (phonetic match is not implemented; same as name)", "name"), "name"),
		p("address", TypeString, "A portion of any part of the address", "address"),
		p("address-city", TypeString, "A city specified in an address", "address.city"),
		p("address-country", TypeString, "A country specified in an address", "address.country"),
		p("address-postalcode", TypeString, "A postal code specified in an address", "address.postalCode"),
		p("address-state", TypeString, "A state specified in an address", "address.state"),
		coded(p("address-use", TypeToken, "A use code specified in an address", "address.use"), "http://hl7.org/fhir/address-use"),
		p("email", TypeToken, "A value in an email contact", "telecom[system=email]"),
		p("phone", TypeToken, "A value in a phone contact", "telecom[system=phone]"),
		p("telecom", TypeToken, "The value in any kind of telecom details", "telecom"),
		coded(p("gender", TypeToken, "Gender of the "+prefix, "gender"), "http://hl7.org/fhir/administrative-gender"),
		p("identifier", TypeToken, "An identifier of the "+prefix, "identifier"),
		p("active", TypeToken, "Whether the "+prefix+" record is active", "active"),
	}
}

func fullParams() map[string][]*SearchParam {
	patient := append(nameParams("patient"),
		p("birthdate", TypeDate, "The patient's date of birth", "birthDate"),
		p("death-date", TypeDate, "The date of death", "deceased"),
		p("deceased", TypeToken, "Whether the patient is deceased", "deceased"),
		p("general-practitioner", TypeReference, "Patient's nominated general practitioner", "generalPractitioner"),
		p("language", TypeToken, "Language code", "communication.language"),
		p("link", TypeReference, "All patients linked to the given patient", "link.other"),
		p("organization", TypeReference, "The organization that is the custodian of the patient record", "managingOrganization"),
	)
	practitioner := append(nameParams("practitioner"),
		p("communication", TypeToken, "One of the languages the practitioner can communicate with", "communication"),
	)
	return map[string][]*SearchParam{
		"Patient":      patient,
		"Practitioner": practitioner,
		"Appointment": {
			p("actor", TypeReference, "Any one of the individuals participating in the appointment", "participant.actor"),
			p("appointment-type", TypeToken, "The style of appointment or patient that has been booked in the slot", "appointmentType"),
			p("based-on", TypeReference, "The service request this appointment is allocated to assess", "basedOn"),
			p("date", TypeDate, "Appointment date/time", "start"),
			p("identifier", TypeToken, "An Identifier of the Appointment", "identifier"),
			p("location", TypeReference, "This location is listed in the participants of the appointment", "participant.actor@Location"),
			coded(p("part-status", TypeToken, "The participation status of the subject", "participant.status"), "http://hl7.org/fhir/participationstatus"),
			p("patient", TypeReference, "One of the individuals of the appointment is this patient", "participant.actor@Patient"),
			p("practitioner", TypeReference, "One of the individuals of the appointment is this practitioner", "participant.actor@Practitioner"),
			p("reason-code", TypeToken, "Coded reason this appointment is scheduled", "reasonCode"),
			p("reason-reference", TypeReference, "Reason the appointment is to take place (resource)", "reasonReference"),
			p("service-category", TypeToken, "A broad categorization of the service", "serviceCategory"),
			p("service-type", TypeToken, "The specific service that is to be performed", "serviceType"),
			p("slot", TypeReference, "The slots that this appointment is filling", "slot"),
			p("specialty", TypeToken, "The specialty of a practitioner", "specialty"),
			coded(p("status", TypeToken, "The overall status of the appointment", "status"), "http://hl7.org/fhir/appointmentstatus"),
			p("supporting-info", TypeReference, "Additional information to support the appointment", "supportingInformation"),
		},
		"Slot": {
			p("appointment-type", TypeToken, "The style of appointment or patient that may be booked in the slot (not service type)", "appointmentType"),
			p("identifier", TypeToken, "A Slot Identifier", "identifier"),
			p("schedule", TypeReference, "The Schedule Resource that we are seeking a slot within", "schedule"),
			p("service-category", TypeToken, "A broad categorization of the service that is to be performed during this appointment", "serviceCategory"),
			p("service-type", TypeToken, "The type of appointments that can be booked into the slot", "serviceType"),
			p("specialty", TypeToken, "The specialty of a practitioner that would be required to perform the service requested in this appointment", "specialty"),
			p("start", TypeDate, "Appointment date/time.", "start"),
			coded(p("status", TypeToken, "The free/busy status of the appointment", "status"), "http://hl7.org/fhir/slotstatus"),
		},
		"Schedule": {
			p("active", TypeToken, "Is the schedule in active use", "active"),
			p("actor", TypeReference, "The individual(HealthcareService, Practitioner, Location, ...) to find a Schedule for", "actor"),
			p("date", TypeDate, "Search for Schedule resources that have a period that contains this date specified", "planningHorizon"),
			p("identifier", TypeToken, "A Schedule Identifier", "identifier"),
			p("service-category", TypeToken, "High-level category", "serviceCategory"),
			p("service-type", TypeToken, "The type of appointments that can be booked into associated slot(s)", "serviceType"),
			p("specialty", TypeToken, "Type of specialty needed", "specialty"),
		},
		"Communication": {
			p("based-on", TypeReference, "Request fulfilled by this communication", "basedOn"),
			p("category", TypeToken, "Message category", "category"),
			p("encounter", TypeReference, "Encounter created as part of", "encounter"),
			p("identifier", TypeToken, "Unique identifier", "identifier"),
			p("instantiates-canonical", TypeReference, "Instantiates FHIR protocol or definition", "instantiatesCanonical"),
			p("instantiates-uri", TypeURI, "Instantiates external protocol or definition", "instantiatesUri"),
			p("medium", TypeToken, "A channel of communication", "medium"),
			p("part-of", TypeReference, "Part of this action", "partOf"),
			p("patient", TypeReference, "Focus of message", "subject@Patient"),
			p("received", TypeDate, "When received", "received"),
			p("recipient", TypeReference, "Message recipient", "recipient"),
			p("sender", TypeReference, "Message sender", "sender"),
			p("sent", TypeDate, "When sent", "sent"),
			coded(p("status", TypeToken, "preparation | in-progress | not-done | on-hold | stopped | completed | entered-in-error | unknown", "status"), "http://hl7.org/fhir/event-status"),
			p("subject", TypeReference, "Focus of message", "subject"),
		},
		"Subscription": {
			p("contact", TypeToken, "Contact details for the subscription", "contact"),
			p("criteria", TypeString, "The search rules used to determine when to send a notification", "criteria"),
			p("payload", TypeToken, "The mime-type of the notification payload", "channel.payload"),
			coded(p("status", TypeToken, "The current state of the subscription", "status"), "http://hl7.org/fhir/subscription-status"),
			coded(p("type", TypeToken, "The type of channel for the sent notifications", "channel.type"), "http://hl7.org/fhir/subscription-channel-type"),
			p("url", TypeURI, "The uri that will receive the notifications", "channel.endpoint"),
		},
		"Observation": {
			p("based-on", TypeReference, "Reference to the service request", "basedOn"),
			p("category", TypeToken, "The classification of the type of observation", "category"),
			p("code", TypeToken, "The code of the observation type", "code"),
			p("combo-code", TypeToken, "The code of the observation type or component type", "code", "component.code"),
			p("combo-data-absent-reason", TypeToken, "The reason why the value is missing (observation or component)", "dataAbsentReason", "component.dataAbsentReason"),
			p("combo-value-concept", TypeToken, "The value or component value of the observation, if a CodeableConcept", "value", "component.value"),
			p("combo-value-quantity", TypeQuantity, "The value or component value of the observation, if a Quantity", "value", "component.value"),
			p("component-code", TypeToken, "The component code of the observation type", "component.code"),
			p("component-data-absent-reason", TypeToken, "The reason why the component value is missing", "component.dataAbsentReason"),
			p("component-value-concept", TypeToken, "The value of the component observation, if a CodeableConcept", "component.value"),
			p("component-value-quantity", TypeQuantity, "The value of the component observation, if a Quantity", "component.value"),
			p("data-absent-reason", TypeToken, "The reason why the expected value is missing", "dataAbsentReason"),
			p("date", TypeDate, "Obtained date/time", "effective"),
			p("derived-from", TypeReference, "Related measurements the observation is made from", "derivedFrom"),
			p("device", TypeReference, "The device that generated the observation data", "device"),
			p("encounter", TypeReference, "Encounter related to the observation", "encounter"),
			p("focus", TypeReference, "The focus of an observation when it is not the patient of record", "focus"),
			p("has-member", TypeReference, "Related resource that belongs to the Observation group", "hasMember"),
			p("identifier", TypeToken, "The unique id for a particular observation", "identifier"),
			p("method", TypeToken, "The method used for the observation", "method"),
			p("part-of", TypeReference, "Part of referenced event", "partOf"),
			p("patient", TypeReference, "The subject that the observation is about (if patient)", "subject@Patient"),
			p("performer", TypeReference, "Who performed the observation", "performer"),
			p("specimen", TypeReference, "Specimen used for this observation", "specimen"),
			coded(p("status", TypeToken, "The status of the observation", "status"), "http://hl7.org/fhir/observation-status"),
			p("subject", TypeReference, "The subject that the observation is about", "subject"),
			p("value-concept", TypeToken, "The value of the observation, if the value is a CodeableConcept", "value"),
			p("value-date", TypeDate, "The value of the observation, if the value is a date or period", "value"),
			p("value-quantity", TypeQuantity, "The value of the observation, if the value is a Quantity, or a SampledData", "value"),
			p("value-string", TypeString, "The value of the observation, if the value is a string", "value"),
		},
		"PractitionerRole": {
			p("active", TypeToken, "Whether this practitioner role record is in active use", "active"),
			p("identifier", TypeToken, "A practitioner's Identifier", "identifier"),
			p("organization", TypeReference, "The identity of the organization the practitioner represents / acts on behalf of", "organization"),
			p("practitioner", TypeReference, "Practitioner that is able to provide the defined services for the organization", "practitioner"),
			p("role", TypeToken, "The practitioner can perform this role at for the organization", "code"),
			p("specialty", TypeToken, "The practitioner has this specialty at an organization", "specialty"),
		},
		"Consent": {
			p("action", TypeToken, "Actions controlled by this rule", "provision.action"),
			p("actor", TypeReference, "Resource for the actor (or group, by role)", "provision.actor.reference"),
			p("category", TypeToken, "Classification of the consent statement", "category"),
			p("consentor", TypeReference, "Who is agreeing to the policy and rules", "performer"),
			p("data", TypeReference, "The actual data reference", "provision.data.reference"),
			p("date", TypeDate, "When this Consent was created or indexed", "dateTime"),
			p("identifier", TypeToken, "Identifier for this record (external references)", "identifier"),
			p("organization", TypeReference, "Custodian of the consent", "organization"),
			p("patient", TypeReference, "Who the consent applies to", "patient"),
			p("period", TypeDate, "Timeframe for this rule", "provision.period"),
			p("purpose", TypeToken, "Context of activities covered by this rule", "provision.purpose"),
			p("scope", TypeToken, "Which of the four areas this resource covers", "scope"),
			p("security-label", TypeToken, "Security Labels that define affected resources", "provision.securityLabel"),
			p("source-reference", TypeReference, "Search by reference to a Consent, DocumentReference, Contract or QuestionnaireResponse", "source"),
			coded(p("status", TypeToken, "draft | proposed | active | rejected | inactive | entered-in-error", "status"), "http://hl7.org/fhir/consent-state-codes"),
		},
		"Encounter": {
			p("account", TypeReference, "The set of accounts that may be used for billing for this Encounter", "account"),
			p("appointment", TypeReference, "The appointment that scheduled this encounter", "appointment"),
			p("based-on", TypeReference, "The ServiceRequest that initiated this encounter", "basedOn"),
			p("class", TypeToken, "Classification of patient encounter", "class"),
			p("date", TypeDate, "A date within the period the Encounter lasted", "period"),
			p("diagnosis", TypeReference, "The diagnosis or procedure relevant to the encounter", "diagnosis.condition"),
			p("episode-of-care", TypeReference, "Episode(s) of care that this encounter should be recorded against", "episodeOfCare"),
			p("identifier", TypeToken, "Identifier(s) by which this encounter is known", "identifier"),
			p("length", TypeQuantity, "Length of encounter in days", "length"),
			p("location", TypeReference, "Location the encounter takes place", "location.location"),
			p("location-period", TypeDate, "Time period during which the patient was present at the location", "location.period"),
			p("part-of", TypeReference, "Another Encounter this encounter is part of", "partOf"),
			p("participant", TypeReference, "Persons involved in the encounter other than the patient", "participant.individual"),
			p("participant-type", TypeToken, "Role of participant in encounter", "participant.type"),
			p("patient", TypeReference, "The patient or group present at the encounter", "subject@Patient"),
			p("practitioner", TypeReference, "Persons involved in the encounter other than the patient", "participant.individual@Practitioner"),
			p("reason-code", TypeToken, "Coded reason the encounter takes place", "reasonCode"),
			p("reason-reference", TypeReference, "Reason the encounter takes place (reference)", "reasonReference"),
			p("service-provider", TypeReference, "The organization (facility) responsible for this encounter", "serviceProvider"),
			p("special-arrangement", TypeToken, "Wheelchair, translator, stretcher, etc.", "hospitalization.specialArrangement"),
			coded(p("status", TypeToken, "planned | arrived | triaged | in-progress | onleave | finished | cancelled +", "status"), "http://hl7.org/fhir/encounter-status"),
			p("subject", TypeReference, "The patient or group present at the encounter", "subject"),
			p("type", TypeToken, "Specific type of encounter", "type"),
		},
		// AuditEvents are written on every access, so they get few index
		// terms: the codings fhirgate writes share a handful of systems
		// (no system-only terms), and an address is an IP address, whose
		// short prefixes are shared by (nearly) every client.
		"AuditEvent": {
			coded(p("action", TypeToken, "Type of action performed during the event", "action"), "http://hl7.org/fhir/audit-event-action"),
			indexPrefixes(p("address", TypeString, "Identifier for the network access point of the user device", "agent.network.address"), 8),
			p("agent", TypeReference, "Identifier of who", "agent.who"),
			p("agent-name", TypeString, "Human friendly name for the agent", "agent.name"),
			noSystemTerms(p("agent-role", TypeToken, "Agent role in the event", "agent.role")),
			p("altid", TypeToken, "Alternative User identity", "agent.altId"),
			p("date", TypeDate, "Time when the event was recorded", "recorded"),
			p("entity", TypeReference, "Specific instance of resource", "entity.what"),
			p("entity-name", TypeString, "Descriptor for entity", "entity.name"),
			noSystemTerms(p("entity-role", TypeToken, "What role the entity played", "entity.role")),
			noSystemTerms(p("entity-type", TypeToken, "Type of entity involved", "entity.type")),
			coded(p("outcome", TypeToken, "Whether the event succeeded or failed", "outcome"), "http://hl7.org/fhir/audit-event-outcome"),
			p("patient", TypeReference, "Identifier of who", "agent.who@Patient", "entity.what@Patient"),
			p("policy", TypeURI, "Policy that authorized event", "agent.policy"),
			p("site", TypeToken, "Logical source location within the enterprise", "source.site"),
			p("source", TypeReference, "The identity of source detecting the event", "source.observer"),
			noSystemTerms(p("subtype", TypeToken, "More specific type/id for the event", "subtype")),
			noSystemTerms(p("type", TypeToken, "Type/identifier of event", "type")),
		},
	}
}

// compartmentParams lists, for every other R4 type that defines them, the
// paths of its `patient` and `subject` search parameters (R4
// search-parameters.json).
var compartmentParams = map[string]struct{ patient, subject []string }{
	"Account":                     {[]string{"subject@Patient"}, []string{"subject"}},
	"AdverseEvent":                {nil, []string{"subject"}},
	"AllergyIntolerance":          {[]string{"patient"}, nil},
	"AppointmentResponse":         {[]string{"actor@Patient"}, nil},
	"Basic":                       {[]string{"subject@Patient"}, []string{"subject"}},
	"BodyStructure":               {[]string{"patient"}, nil},
	"CarePlan":                    {[]string{"subject@Patient"}, []string{"subject"}},
	"CareTeam":                    {[]string{"subject@Patient"}, []string{"subject"}},
	"ChargeItem":                  {[]string{"subject@Patient"}, []string{"subject"}},
	"Claim":                       {[]string{"patient"}, nil},
	"ClaimResponse":               {[]string{"patient"}, nil},
	"ClinicalImpression":          {[]string{"subject@Patient"}, []string{"subject"}},
	"CommunicationRequest":        {[]string{"subject@Patient"}, []string{"subject"}},
	"Composition":                 {[]string{"subject@Patient"}, []string{"subject"}},
	"Condition":                   {[]string{"subject@Patient"}, []string{"subject"}},
	"Contract":                    {[]string{"subject@Patient"}, []string{"subject"}},
	"Coverage":                    {[]string{"beneficiary"}, nil},
	"CoverageEligibilityRequest":  {[]string{"patient"}, nil},
	"CoverageEligibilityResponse": {[]string{"patient"}, nil},
	"DetectedIssue":               {[]string{"patient"}, nil},
	"Device":                      {[]string{"patient"}, nil},
	"DeviceRequest":               {[]string{"subject@Patient"}, []string{"subject"}},
	"DeviceUseStatement":          {[]string{"subject"}, []string{"subject"}},
	"DiagnosticReport":            {[]string{"subject@Patient"}, []string{"subject"}},
	"DocumentManifest":            {[]string{"subject@Patient"}, []string{"subject"}},
	"DocumentReference":           {[]string{"subject@Patient"}, []string{"subject"}},
	"EnrollmentRequest":           {[]string{"candidate"}, []string{"candidate"}},
	"EpisodeOfCare":               {[]string{"patient"}, nil},
	"ExplanationOfBenefit":        {[]string{"patient"}, nil},
	"FamilyMemberHistory":         {[]string{"patient"}, nil},
	"Flag":                        {[]string{"subject@Patient"}, []string{"subject"}},
	"Goal":                        {[]string{"subject@Patient"}, []string{"subject"}},
	"GuidanceResponse":            {[]string{"subject@Patient"}, []string{"subject"}},
	"ImagingStudy":                {[]string{"subject@Patient"}, []string{"subject"}},
	"Immunization":                {[]string{"patient"}, nil},
	"ImmunizationEvaluation":      {[]string{"patient"}, nil},
	"ImmunizationRecommendation":  {[]string{"patient"}, nil},
	"Invoice":                     {[]string{"subject@Patient"}, []string{"subject"}},
	"List":                        {[]string{"subject@Patient"}, []string{"subject"}},
	"MeasureReport":               {[]string{"subject@Patient"}, []string{"subject"}},
	"Media":                       {[]string{"subject@Patient"}, []string{"subject"}},
	"MedicationAdministration":    {[]string{"subject@Patient"}, []string{"subject"}},
	"MedicationDispense":          {[]string{"subject@Patient"}, []string{"subject"}},
	"MedicationRequest":           {[]string{"subject@Patient"}, []string{"subject"}},
	"MedicationStatement":         {[]string{"subject@Patient"}, []string{"subject"}},
	"MolecularSequence":           {[]string{"patient"}, nil},
	"NutritionOrder":              {[]string{"patient"}, nil},
	"Person":                      {[]string{"link.target@Patient"}, nil},
	"Procedure":                   {[]string{"subject@Patient"}, []string{"subject"}},
	"Provenance":                  {[]string{"target@Patient"}, nil},
	"QuestionnaireResponse":       {[]string{"subject@Patient"}, []string{"subject"}},
	"RelatedPerson":               {[]string{"patient"}, nil},
	"RequestGroup":                {[]string{"subject@Patient"}, []string{"subject"}},
	"ResearchSubject":             {[]string{"individual"}, nil},
	"RiskAssessment":              {[]string{"subject@Patient"}, []string{"subject"}},
	"ServiceRequest":              {[]string{"subject@Patient"}, []string{"subject"}},
	"Specimen":                    {[]string{"subject@Patient"}, []string{"subject"}},
	"SupplyDelivery":              {[]string{"patient"}, nil},
	"SupplyRequest":               {nil, []string{"deliverTo"}},
	"Task":                        {[]string{"for@Patient"}, []string{"for"}},
	"VisionPrescription":          {[]string{"patient"}, nil},
}

// Common parameters every type has; their values come from the stored
// record, not from paths.
const (
	ParamID          = "_id"
	ParamLastUpdated = "_lastUpdated"
)

// DefaultParams returns the registry the server uses: full parameter sets
// for Patient, Practitioner, PractitionerRole, Appointment, Slot, Schedule,
// Observation, Consent, Encounter, AuditEvent, Communication and
// Subscription; for every other R4 type, `patient` and `subject` where R4
// defines them, and `identifier`. Every type also has _id and
// _lastUpdated.
func DefaultParams() Params {
	out := Params{}
	for _, t := range ResourceTypes() {
		m := map[string]*SearchParam{
			ParamID:          p(ParamID, TypeToken, "Logical id of this artifact", "id"),
			ParamLastUpdated: p(ParamLastUpdated, TypeDate, "When the resource version last changed", "meta.lastUpdated"),
		}
		if cp, ok := compartmentParams[t]; ok {
			if cp.patient != nil {
				m["patient"] = p("patient", TypeReference, "Who the resource is about (if a patient)", cp.patient...)
			}
			if cp.subject != nil {
				m["subject"] = p("subject", TypeReference, "Who the resource is about", cp.subject...)
			}
		}
		out[t] = m
	}
	for t, m := range out {
		if !noIdentifier[t] {
			m["identifier"] = p("identifier", TypeToken, "A business identifier of the "+t, "identifier")
		}
	}
	for t, ps := range fullParams() {
		for _, sp := range ps {
			out[t][sp.Name] = sp
		}
	}
	return out
}

// noIdentifier lists the R4 types without an identifier element; every
// other type can be searched by identifier (conditional references and
// creates name resources so: Organization?identifier=...).
var noIdentifier = map[string]bool{
	"AuditEvent": true, "Binary": true, "CapabilityStatement": true, "CompartmentDefinition": true,
	"GraphDefinition": true, "ImplementationGuide": true, "Linkage": true,
	"MedicationKnowledge": true, "MedicinalProductContraindication": true,
	"MedicinalProductIndication": true, "MedicinalProductInteraction": true,
	"MedicinalProductManufactured": true, "MedicinalProductUndesirableEffect": true,
	"MessageHeader": true, "NamingSystem": true, "OperationDefinition": true,
	"OperationOutcome": true, "Parameters": true, "Provenance": true, "SearchParameter": true,
	"Subscription": true, "SubstanceNucleicAcid": true, "SubstancePolymer": true,
	"SubstanceProtein": true, "SubstanceReferenceInformation": true, "SubstanceSourceMaterial": true,
	"TerminologyCapabilities": true, "VerificationResult": true,
}

// Sorted returns the parameters of type t sorted by name.
func (ps Params) Sorted(t string) []*SearchParam {
	var out []*SearchParam
	for _, sp := range ps[t] {
		out = append(out, sp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
