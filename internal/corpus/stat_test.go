package corpus

import "syscall"

type syscallStat struct{ size, allocated int64 }

func statBlocks(path string, s *syscallStat) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return err
	}
	s.size = st.Size
	s.allocated = st.Blocks * 512
	return nil
}
