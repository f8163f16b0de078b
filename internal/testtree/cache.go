package testtree

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CachedPages is how many of the pages of the file at path are in the page
// cache: cachestat(2) from Linux 6.5 on, mincore(2) of a mapping before.
func CachedPages(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var cs unix.Cachestat_t
	err = unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0)
	if err == nil {
		return int(cs.Cache), nil
	}
	if err != unix.ENOSYS {
		return 0, fmt.Errorf("cachestat %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() == 0 {
		return 0, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map %s: %w", path, err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, fmt.Errorf("mincore %s: %w", path, e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n, nil
}

// WaitCached waits up to timeout for every file of paths to have at least
// pages pages in the page cache (reads started, not made, land in their
// time) and returns, for each file that has fewer, its path and count.
func WaitCached(paths []string, pages int, timeout time.Duration) (short map[string]int, err error) {
	deadline := time.Now().Add(timeout)
	for _, p := range paths {
		for {
			n, err := CachedPages(p)
			if err != nil {
				return nil, err
			}
			if n >= pages {
				break
			}
			if time.Now().After(deadline) {
				if short == nil {
					short = map[string]int{}
				}
				short[p] = n
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return short, nil
}
