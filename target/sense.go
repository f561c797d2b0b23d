package target

import "encoding/binary"

// SCSI status codes (SAM-5 section 5.3.1).
const (
	statusGood                = 0x00
	statusCheckCondition      = 0x02
	statusConditionMet        = 0x04
	statusBusy                = 0x08
	statusReservationConflict = 0x18
	statusTaskSetFull         = 0x28
	statusTaskAborted         = 0x40
)

// Sense keys (SPC-4 table 48).
const (
	senseNoSense        = 0x0
	senseNotReady       = 0x2
	senseMediumError    = 0x3
	senseHardwareError  = 0x4
	senseIllegalRequest = 0x5
	senseUnitAttention  = 0x6
	senseDataProtect    = 0x7
	senseAbortedCommand = 0xb
	senseMiscompare     = 0xe
)

// Additional sense codes, ASC<<8|ASCQ (SPC-4 table 49).
const (
	ascNone                       = 0x0000
	ascNotReadyManualIntervention = 0x0403
	ascNotReadyInitCmdRequired    = 0x0402
	ascNotReadyTransition         = 0x040a
	ascNotReadyStandby            = 0x040b
	ascNotReadyUnavailable        = 0x040c
	ascWriteError                 = 0x0c00
	ascUnrecoveredReadError       = 0x1100
	ascParamListLength            = 0x1a00
	ascMiscompareVerify           = 0x1d00
	ascInvalidOpcode              = 0x2000
	ascLBAOutOfRange              = 0x2100
	ascInvalidFieldInCDB          = 0x2400
	ascLUNotSupported             = 0x2500
	ascInvalidFieldInParam        = 0x2600
	ascWriteProtected             = 0x2700
	ascSpaceAllocFailed           = 0x2707 // SPACE ALLOCATION FAILED WRITE PROTECT
	ascPowerOnReset               = 0x2900
	ascProtocolCRC                = 0x4705 // PROTOCOL SERVICE CRC ERROR
	ascBusDeviceReset             = 0x2903
	ascNexusLoss                  = 0x2907
	ascModeParamsChanged          = 0x2a01
	ascReservationsPreempted      = 0x2a03
	ascReservationsReleased       = 0x2a04
	ascRegistrationsPreempted     = 0x2a05
	ascAsymAccessStateChanged     = 0x2a06
	ascCapacityChanged            = 0x2a09
	ascCommandsCleared            = 0x2f00
	ascSavingParamsNotSupported   = 0x3900
	ascMediumNotPresent           = 0x3a00
	ascReportedLUNsChanged        = 0x3f0e
	ascInsufficientRegResources   = 0x5504
	ascMediumRemovalPrevented     = 0x5302
	ascInternalTargetFailure      = 0x4400
	ascInvalidFieldInIU           = 0x0e03
)

// scsiResult is the outcome of a command: status, sense data and the
// Data-In buffer. release, if set, returns data's buffer once it is sent.
type scsiResult struct {
	status  byte
	sense   []byte
	data    []byte
	release func()
	// volErr is the volume failure behind the sense data, if any.
	volErr error
}

var resultGood = &scsiResult{status: statusGood}

func good(data []byte) *scsiResult { return &scsiResult{status: statusGood, data: data} }

// senseData builds fixed-format sense data (SPC-4 section 4.5.3).
type senseData struct {
	key       byte
	asc       uint16
	info      uint64 // INFORMATION field, valid when infoValid
	infoValid bool
	// Sense-key specific field pointer (SPC-4 section 4.5.2.4.2): when
	// fieldValid, field is the byte of the CDB (cdb=true) or of the
	// parameter list in error, bit the bit (bitValid).
	fieldValid bool
	cdb        bool
	field      uint16
	bit        byte
	bitValid   bool
}

func (s senseData) bytes() []byte {
	b := make([]byte, 18)
	b[0] = 0x70
	if s.infoValid {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:7], uint32(s.info))
	}
	b[2] = s.key & 0x0f
	b[7] = 10
	b[12] = byte(s.asc >> 8)
	b[13] = byte(s.asc)
	if s.fieldValid {
		b[15] = 0x80
		if s.cdb {
			b[15] |= 0x40
		}
		if s.bitValid {
			b[15] |= 0x08 | s.bit&7
		}
		binary.BigEndian.PutUint16(b[16:18], s.field)
	}
	return b
}

func checkCondition(key byte, asc uint16) *scsiResult {
	return &scsiResult{status: statusCheckCondition, sense: senseData{key: key, asc: asc}.bytes()}
}

func checkSense(s senseData) *scsiResult {
	return &scsiResult{status: statusCheckCondition, sense: s.bytes()}
}

// invalidCDB is ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at byte
// field (and bit, when bit >= 0).
func invalidCDB(field int, bit int) *scsiResult {
	s := senseData{key: senseIllegalRequest, asc: ascInvalidFieldInCDB, fieldValid: true, cdb: true, field: uint16(field)}
	if bit >= 0 {
		s.bitValid, s.bit = true, byte(bit)
	}
	return checkSense(s)
}

// invalidParam is ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
func invalidParam(field int, bit int) *scsiResult {
	s := senseData{key: senseIllegalRequest, asc: ascInvalidFieldInParam, fieldValid: true, field: uint16(field)}
	if bit >= 0 {
		s.bitValid, s.bit = true, byte(bit)
	}
	return checkSense(s)
}

func lbaOutOfRange() *scsiResult {
	return checkCondition(senseIllegalRequest, ascLBAOutOfRange)
}

func invalidOpcode() *scsiResult {
	return checkSense(senseData{key: senseIllegalRequest, asc: ascInvalidOpcode, fieldValid: true, cdb: true, field: 0})
}

func reservationConflict() *scsiResult {
	return &scsiResult{status: statusReservationConflict}
}

// descriptorSense converts fixed-format sense data to descriptor format
// (SPC-4 section 4.5.2), used when the control mode page has D_SENSE set.
func descriptorSense(fixed []byte) []byte {
	if len(fixed) < 18 || fixed[0]&0x7f != 0x70 {
		return fixed
	}
	d := []byte{0x72, fixed[2] & 0x0f, fixed[12], fixed[13], 0, 0, 0, 0}
	if fixed[0]&0x80 != 0 {
		// Information descriptor (type 0) with the VALID bit.
		info := []byte{0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, fixed[3], fixed[4], fixed[5], fixed[6]}
		d = append(d, info...)
	}
	if fixed[15]&0x80 != 0 {
		// Sense key specific descriptor (type 2).
		d = append(d, 0x02, 0x06, 0, 0, fixed[15], fixed[16], fixed[17], 0)
	}
	d[7] = byte(len(d) - 8)
	return d
}
