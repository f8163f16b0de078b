package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// summarize prints, for each results file (one shape each), vaultnode's
// ratios to restic per phase: speed, CPU of the agent alone and of agent
// plus vault, the agent's and both's peak RSS, bytes stored.
func summarize(w io.Writer, paths []string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shape\tphase\tspeed (restic wall / ours)\tCPU agent+vault / restic\tagent CPU / restic\tagent RSS / restic\tagent+vault RSS / restic\tstore growth / restic\tvault CPU s\t")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("summarize: %w", err)
		}
		var r results
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("summarize %s: %w", p, err)
		}
		name := r.Shape
		if r.NoSparse {
			name += " (no sparse)"
		}
		if r.MutationKind == mutationTouch {
			name += " (touched)"
		}
		if r.Tree != "" {
			name = "tree " + r.Tree
		}
		for _, ph := range allPhases {
			v, rs := r.find("vaultnode", ph), r.find("restic", ph)
			if v == nil || rs == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t\n", name, ph,
				ratio(rs.WallSeconds, v.WallSeconds), ratio(v.CPUSeconds, rs.CPUSeconds),
				ratio(v.ClientCPUSeconds, rs.CPUSeconds),
				ratio(float64(v.ClientPeakRSSBytes), float64(rs.PeakRSSBytes)),
				ratio(float64(v.PeakRSSBytes), float64(rs.PeakRSSBytes)),
				ratio(float64(v.StoreBytesAdded), float64(rs.StoreBytesAdded)), v.ServerCPUSeconds)
		}
	}
	return tw.Flush()
}
