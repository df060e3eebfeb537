package agent

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"airlock.dev/airlock/services/agentapi"
)

// Config is what the agent learns from the kernel command line.
type Config struct {
	// Token is the per-boot token (airlock.token=).
	Token agentapi.Token
	// URL is airlock's boot server (airlock.url=), e.g.
	// http://10.0.0.1:8080: plain HTTP, for what is checked against a
	// digest its order gives (the OS image).
	URL *url.URL
	// API is airlock's agent API (airlock.api=), e.g.
	// https://10.0.0.1:8443: orders, reports and seeds, over TLS with
	// airlock's CA only.
	API *url.URL
	// BootMAC is the MAC of the NIC the machine booted from: airlock.mac=
	// (what airlock's iPXE script passes) or pxelinux's
	// BOOTIF=01-aa-bb-cc-dd-ee-ff.
	BootMAC net.HardwareAddr
	// LLDPWait bounds how long to listen for LLDP before registering
	// (airlock.lldp=2s).
	LLDPWait time.Duration
	// LLDPLate is how much longer to listen after registering, on NICs
	// that heard nothing (airlock.lldp.late=35s; switches send every 30 s).
	LLDPLate time.Duration
}

// ParseCmdline reads the agent's settings from a kernel command line.
func ParseCmdline(cmdline string) (Config, error) {
	c := Config{LLDPWait: 2 * time.Second, LLDPLate: 35 * time.Second}
	var errs []error
	var haveToken, haveURL, haveAPI bool
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case agentapi.CmdlineToken:
			t, err := agentapi.ParseToken(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", k, err))
				continue
			}
			c.Token, haveToken = t, true
		case agentapi.CmdlineURL:
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not an http(s) URL", k, v))
				continue
			}
			c.URL, haveURL = u, true
		case agentapi.CmdlineAPI:
			u, err := url.Parse(v)
			if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not an https URL (the agent API is served over TLS only)", k, v))
				continue
			}
			c.API, haveAPI = u, true
		case "BOOTIF":
			// pxelinux/iPXE form: 01-aa-bb-cc-dd-ee-ff (01 = Ethernet).
			hw, err := net.ParseMAC(strings.ReplaceAll(strings.TrimPrefix(v, "01-"), "-", ":"))
			if err != nil || len(hw) != 6 {
				errs = append(errs, fmt.Errorf("BOOTIF: %q is not 01-aa-bb-cc-dd-ee-ff", v))
				continue
			}
			c.BootMAC = hw
		case "airlock.mac":
			hw, err := net.ParseMAC(v)
			if err != nil || len(hw) != 6 {
				errs = append(errs, fmt.Errorf("airlock.mac: %q is not a MAC address", v))
				continue
			}
			c.BootMAC = hw
		case "airlock.lldp", "airlock.lldp.late":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > 5*time.Minute {
				errs = append(errs, fmt.Errorf("%s: %q is not a duration up to 5m", k, v))
				continue
			}
			if k == "airlock.lldp" {
				c.LLDPWait = d
			} else {
				c.LLDPLate = d
			}
		}
	}
	if !haveToken {
		errs = append(errs, fmt.Errorf("no %s= on the kernel command line", agentapi.CmdlineToken))
	}
	if !haveURL {
		errs = append(errs, fmt.Errorf("no %s= on the kernel command line", agentapi.CmdlineURL))
	}
	if !haveAPI {
		errs = append(errs, fmt.Errorf("no %s= on the kernel command line (an airlock from before the agent API moved to TLS?)", agentapi.CmdlineAPI))
	}
	return c, errors.Join(errs...)
}
