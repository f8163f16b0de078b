package vault

import (
	"os/exec"
	"strings"
	"testing"
)

// TestApplianceAndAgentAreApart holds the repository rule: appliance/ never
// imports agentkit/ nor the reverse; what both need lives in internal/.
func TestApplianceAndAgentAreApart(t *testing.T) {
	for _, tc := range []struct{ pkgs, forbidden string }{
		{"vaultnode/appliance/...", "vaultnode/agentkit/"},
		{"vaultnode/agentkit/...", "vaultnode/appliance/"},
	} {
		// -deps without -test: the rule is about what the binaries link.
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", tc.pkgs).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", tc.pkgs, err, out)
		}
		for _, p := range strings.Fields(string(out)) {
			if strings.HasPrefix(p, tc.forbidden) {
				t.Errorf("%s depends on %s: move what both need to internal/", tc.pkgs, p)
			}
		}
	}
}
