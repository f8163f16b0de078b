package raid

import (
	"encoding/json"
	"errors"
	"fmt"
)

// maxSmartJSON bounds smartctl's output the controller reads.
const maxSmartJSON = 1 << 20

// ErrSmartJSON means smartctl's output is not its JSON.
var ErrSmartJSON = errors.New("smartctl output not understood")

// smartctl --json exit status bits (smartctl(8)).
const (
	smartBadArgs   = 1 << 0 // command line did not parse
	smartOpenFail  = 1 << 1 // device open failed, or it does not answer SMART
	smartCmdFail   = 1 << 2 // a SMART command failed, or the checksum of its data
	smartFailing   = 1 << 3 // SMART status: DISK FAILING
	smartPrefail   = 1 << 4 // prefail attributes at or below threshold
	smartWasPrefai = 1 << 5 // some attribute was at or below threshold once
)

type smartOut struct {
	Smartctl struct {
		ExitStatus int `json:"exit_status"`
		Messages   []struct {
			String   string `json:"string"`
			Severity string `json:"severity"`
		} `json:"messages"`
	} `json:"smartctl"`
	SmartStatus *struct {
		Passed bool `json:"passed"`
	} `json:"smart_status"`
	Temperature *struct {
		Current int `json:"current"`
	} `json:"temperature"`
	ATA *struct {
		Table []struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
			Raw  struct {
				Value int64 `json:"value"`
			} `json:"raw"`
		} `json:"table"`
	} `json:"ata_smart_attributes"`
	NVMe *struct {
		CriticalWarning int `json:"critical_warning"`
		MediaErrors     int `json:"media_errors"`
	} `json:"nvme_smart_health_information_log"`
}

// Smart is a disk's SMART verdict.
type Smart struct {
	Verdict string // "passed", "FAILING: ...", or "unknown: why"
	Temp    int    // °C, 0 when not reported
}

// ParseSmartctl reads `smartctl --json -H -A DEV` output.
func ParseSmartctl(b []byte) (Smart, error) {
	if len(b) > maxSmartJSON {
		return Smart{}, fmt.Errorf("%w: %d bytes, over the %d limit (maxSmartJSON)", ErrSmartJSON, len(b), maxSmartJSON)
	}
	var o smartOut
	if err := json.Unmarshal(b, &o); err != nil {
		return Smart{}, fmt.Errorf("%w: %v", ErrSmartJSON, err)
	}
	var s Smart
	if o.Temperature != nil {
		s.Temp = o.Temperature.Current
	}
	es := o.Smartctl.ExitStatus
	if o.SmartStatus == nil || es&(smartBadArgs|smartOpenFail) != 0 {
		why := "the disk does not answer SMART"
		for _, m := range o.Smartctl.Messages {
			if m.String != "" {
				why = m.String
				break
			}
		}
		s.Verdict = "unknown: " + why
		return s, nil
	}
	var bad []string
	if !o.SmartStatus.Passed || es&smartFailing != 0 {
		bad = append(bad, "health self-assessment failed")
	}
	if es&smartPrefail != 0 {
		bad = append(bad, "pre-failure attributes at threshold")
	}
	if o.ATA != nil {
		for _, a := range o.ATA.Table {
			if (a.ID == 5 || a.ID == 197 || a.ID == 198) && a.Raw.Value > 0 {
				bad = append(bad, fmt.Sprintf("%s %d", a.Name, a.Raw.Value))
			}
		}
	}
	if o.NVMe != nil {
		if o.NVMe.CriticalWarning != 0 {
			bad = append(bad, fmt.Sprintf("critical warning 0x%x", o.NVMe.CriticalWarning))
		}
		if o.NVMe.MediaErrors > 0 {
			bad = append(bad, fmt.Sprintf("%d media errors", o.NVMe.MediaErrors))
		}
	}
	if len(bad) > 0 {
		s.Verdict = "FAILING: " + joinComma(bad)
	} else {
		s.Verdict = "passed"
	}
	return s, nil
}

func joinComma(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ", "
		}
		out += s
	}
	return out
}
