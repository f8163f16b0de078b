package firmware

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"time"
)

// adminGet decodes into v the JSON answer (at most 1 MiB) of vaultd's
// admin socket under dataDir to GET path, within timeout; false when
// vaultd does not answer, answers other than 200 or sends something else.
// The status screen's lines read vaultd's state through it.
func adminGet(dataDir, path string, timeout time.Duration, v any) bool {
	sock := filepath.Join(dataDir, "admin.sock")
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://vault" + path)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK && json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(v) == nil
}
