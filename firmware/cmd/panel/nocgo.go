//go:build !cgo

package main

import (
	"fmt"
	"os"
)

// Without cgo there is no libusb: the image builds this program with
// CGO_ENABLED=1 (images.CgoBinaries).
func main() {
	fmt.Fprintln(os.Stderr, "panel: built without cgo, so without libusb: build it with CGO_ENABLED=1 (apt-get install gcc libusb-1.0-0-dev)")
	os.Exit(2)
}
