// Command mkimage builds the appliance image: out/image/{vmlinux,initramfs.cpio}.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"vaultnode/images"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "out/image", "output directory")
	root := fs.String("root", ".", "root of the vaultnode module")
	version := fs.String("version", "", "firmware version (default: git describe)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" {
		*version = "dev"
		if b, err := exec.Command("git", "-C", *root, "describe", "--always", "--dirty").Output(); err == nil {
			*version = strings.TrimSpace(string(b))
		}
	}
	res, err := images.Build(ctx, images.Options{Root: *root, Out: *out, Version: *version, Log: stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kernel     %s (%s)\ninitramfs  %s: %.1f MiB, %d files, sha256 %s\nversion    %s\nbuilt in   %.1fs\n",
		res.Kernel, res.KernelVersion, res.Initramfs, float64(res.InitramfsSize)/(1<<20), len(res.Files),
		res.InitramfsSHA256[:16], *version, res.Took.Seconds())
	if len(res.Skipped) > 0 {
		fmt.Fprintf(stdout, "left out   %s (they did not build)\n", strings.Join(res.Skipped, " "))
	}
	return nil
}
