package tape

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/discover"
	"vaultnode/appliance/tape/drive"
)

// OpenLibrary builds the Library the Service uses from one that discovery
// found: the changer and every drive matched to a drive element, each
// opened with open (discover.OpenSG in the product: SG_IO wrapped in
// scsi.Retry). close closes every device opened.
func OpenLibrary(found discover.Library, open discover.Opener, log *zap.Logger) (lib Library, close func() error, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	var closers []func() error
	close = func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		return errors.Join(errs...)
	}
	h, c, err := open(found.Changer.Path)
	if err != nil {
		return Library{}, close, fmt.Errorf("open changer %s: %w", found.Changer.Path, err)
	}
	closers = append(closers, c)
	lib = Library{Changer: changer.New(h, log.Named("changer")), Drives: map[uint16]Drive{}}
	for _, d := range found.Drives {
		h, c, err := open(d.Device.Path)
		if err != nil {
			close()
			return Library{}, func() error { return nil }, fmt.Errorf("open drive %s (element %d): %w", d.Device.Path, d.Element, err)
		}
		closers = append(closers, c)
		lib.Drives[d.Element] = drive.New(h, log.Named("drive").With(zap.Uint16("element", d.Element), zap.String("device", d.Device.Path)))
	}
	return lib, close, nil
}
