package hwtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/images"
)

// image is built once per test run by TestMain.
var (
	image      images.Result
	root       string // module root
	skipReason string
	manifest   string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	wd, _ := os.Getwd()
	root = filepath.Dir(wd)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "hwtest: qemu-system-x86_64 is missing in CI: .ci/run must install qemu-system-x86")
			return 1
		}
		skipReason = "SKIPPING THE IMAGE TESTS: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
		fmt.Fprintln(os.Stderr, "hwtest:", skipReason)
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var err error
	image, err = images.Build(ctx, images.Options{Root: root, Out: filepath.Join(root, "out", "image"), Version: "hwtest", Log: os.Stderr,
		ExtraBinaries: testBinaries, ExtraTools: testTools()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hwtest: build the image:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "hwtest: image built in %.1fs: initramfs %.1f MiB, kernel %s, left out: %v\n",
		time.Since(start).Seconds(), float64(image.InitramfsSize)/(1<<20), image.KernelVersion, image.Skipped)
	manifest = strings.Join(image.Files, "\n")
	return m.Run()
}

func needQEMU(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func hasFile(name string) bool {
	for _, f := range image.Files {
		if f == name {
			return true
		}
	}
	return false
}

// testBinaries are guest programs the tests run in the image.
var testBinaries = []images.Binary{{Pkg: "./hwtest/guest/tapeprobe", Dest: "bin/tapeprobe", Required: true},
	{Pkg: "./hwtest/cmd/panelemu", Dest: "bin/panelemu", Required: true}} // the front panel emulated through FunctionFS

// testTools are Debian programs the tests run in the image: Debian's mt
// (mt-st) and GNU tar read a cartridge by hand, as a person would; GNU dd
// is the tape benchmark's reference.
func testTools() map[string]string {
	m := map[string]string{}
	for src, dst := range map[string]string{"/bin/mt-st": "bin/mt", "/bin/tar": "bin/tar", "/bin/dd": "bin/dd"} {
		if _, err := os.Stat(src); err == nil {
			m[src] = dst
		}
	}
	return m
}
