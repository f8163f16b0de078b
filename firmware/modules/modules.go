// Package modules lists the kernel modules of the appliance: the ones the
// firmware loads at boot and the ones the image carries for later use.
// images/ copies Image (with its modules.dep closure) into the initramfs.
package modules

// Boot is loaded in this order by PID 1.
var Boot = []string{
	"virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_rng", // QEMU and cloud hardware
	"sd_mod", "sg", "st", "ch", // SCSI disks, generic, tape, changer
	"crc32c_generic", "ext4", // filesystems (libcrc32c only softdeps on crc32c)
	"md_mod", "raid1", // data mirror
	"button", "evdev", // ACPI power button as an input device
	"sch_htb", "sch_tbf", // traffic shaping
	"sch_ingress", "ifb", "cls_u32", "act_mirred", // uplink QoS: ingress redirected to an IFB device, u32 classes
	"xhci_pci", "ehci_pci", // USB host controllers: the front panel
}

// OnDemand is in the image but loaded only when needed: raid456 benchmarks
// its parity code for about a second at load.
var OnDemand = []string{"raid456", "raid10", "linear", "sch_netem", "e1000",
	"configfs", "libcomposite", "usb_f_fs", "dummy_hcd", "virtio_console"} // the test image's emulated front panel (USB gadget through FunctionFS)

// Image is every module the image carries (plus their dependencies).
func Image() []string { return append(append([]string{}, Boot...), OnDemand...) }
