// Command fhirgate is the fhirgate FHIR R4 gateway.
//
//	fhirgate serve       serve the FHIR REST API
//	fhirgate healthcheck probe a running server's /healthz (for containers)
//	fhirgate import      load NDJSON and Bundle files into a FHIR server
//	fhirgate conformance run the black-box conformance suite against a base URL
//	fhirgate keys        manage key-encryption keys (init, status, rotate, rewrap, prune)
//	fhirgate token       print a token from the embedded dev issuer
//	fhirgate policy      test and evaluate Rego access policies
//	fhirgate anchor      deploy the anchoring contract on an EVM chain
//	fhirgate verify      verify a receipt against the chain, offline
//	fhirgate audit       check the log was never rewritten between anchors
package main

import (
	"context"
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx := context.Background()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "healthcheck":
		err = healthcheck(ctx, os.Args[2:])
	case "conformance":
		err = conformanceCmd(ctx, os.Args[2:])
	case "keys":
		err = keysCmd(ctx, os.Args[2:])
	case "token":
		err = tokenCmd(ctx, os.Args[2:])
	case "policy":
		err = policyCmd(ctx, os.Args[2:])
	case "anchor":
		err = anchorCmd(ctx, os.Args[2:], os.Stdout)
	case "verify":
		err = verifyCmd(ctx, os.Args[2:], os.Stdout)
	case "audit":
		err = auditCmd(ctx, os.Args[2:], os.Stdout)
	case "import":
		err = importCmd(ctx, os.Args[2:])
	case "version":
		fmt.Println(version)
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "fhirgate: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fhirgate:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: fhirgate <command> [flags]

commands:
  serve        serve the FHIR R4 REST API (fhirgate serve -h for flags)
  healthcheck  exit 0 when the server at --url answers /healthz
  conformance  run the conformance suites against --base-url
  keys         manage encryption keys: init, status, rotate, rewrap, prune
  token        print a bearer token from the embedded dev issuer (DATA-DIR's key)
  policy       policy test [dir] | policy eval --input FILE: Rego access policies
  anchor       anchor deploy --chain-rpc URL --chain-key-file F: deploy the Anchor contract
  verify       verify --receipt R [--resource V] --rpc URL: check a receipt against the chain
  audit        audit --rpc URL --gateway URL: check every pair of anchors is consistent
  import       import --base URL [flags] FILES|DIRS: load NDJSON files and Bundles, idempotently
  version      print the version
`)
}
