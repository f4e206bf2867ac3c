package auth_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

func Example() {
	ctx := context.Background()
	key, err := auth.GenerateDevKey() // or auth.LoadOrCreateDevKey(dataDir)
	if err != nil {
		log.Fatal(err)
	}
	raw, err := key.Sign(auth.Claims{
		Subject:      "dr-1",
		FHIRUser:     "Practitioner/p1",
		Scope:        "user/*.read",
		Patient:      "123",
		PurposeOfUse: "ETREAT",
	}, time.Hour)
	if err != nil {
		log.Fatal(err)
	}

	v, err := auth.NewVerifier(ctx, auth.Config{
		JWKS:     key.PublicJWKS(),
		Issuer:   auth.DevIssuer,
		Audience: auth.DevAudience,
	})
	if err != nil {
		log.Fatal(err)
	}
	c, err := v.Verify(ctx, raw)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.FHIRUser, c.Patient, c.Scope, c.PurposeOfUse)

	_, err = v.Verify(ctx, raw[:len(raw)-4]+"AAAA")
	var rej *auth.Error
	if errors.As(err, &rej) {
		fmt.Printf("%s: %s\n", rej.Code, rej.Description)
	}
	// Output:
	// Practitioner/p1 Patient/123 user/*.read ETREAT
	// invalid_token: token signature is invalid
}
