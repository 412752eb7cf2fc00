package lab

import (
	"fmt"
	"strings"

	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/install/systemd"
)

// UnitExecStart is the command line that systemd would run for unit (e.g.
// "containerd.service") of a host root, read exactly as hopless-install reads it
// (install/systemd): the unit file and its drop-ins UNIT.d/*.conf in lexical
// order, where an empty ExecStart= drops the ones before it. Words that systemd
// would expand (variables, specifiers) are refused: the lab does not expand them.
func UnitExecStart(hostRoot, unit string) ([]string, error) {
	argv, err := systemd.ExecStart(hostfs.Root{Dir: hostRoot}, unit, "")
	if err != nil {
		return nil, err
	}
	for _, w := range argv {
		if strings.ContainsAny(w, "$%") {
			return nil, fmt.Errorf("unit %s: ExecStart word %q needs systemd's expansion, which the lab does not do", unit, w)
		}
	}
	return argv, nil
}
