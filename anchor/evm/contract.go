// Code generated via abigen V2 - DO NOT EDIT.
// This file is a generated binding and any manual changes will be lost.

package evm

import (
	"bytes"
	"errors"
	"math/big"

	"github.com/ethereum/go-ethereum/accounts/abi"
	"github.com/ethereum/go-ethereum/accounts/abi/bind/v2"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
)

// Reference imports to suppress errors if they are not otherwise used.
var (
	_ = bytes.Equal
	_ = errors.New
	_ = big.NewInt
	_ = common.Big1
	_ = types.BloomLookup
	_ = abi.ConvertType
)

// AnchorContractMetaData contains all meta data concerning the AnchorContract contract.
var AnchorContractMetaData = bind.MetaData{
	ABI: "[{\"inputs\":[],\"stateMutability\":\"nonpayable\",\"type\":\"constructor\"},{\"inputs\":[{\"internalType\":\"uint64\",\"name\":\"treeSize\",\"type\":\"uint64\"},{\"internalType\":\"uint64\",\"name\":\"latestSize\",\"type\":\"uint64\"}],\"name\":\"NotGrowing\",\"type\":\"error\"},{\"inputs\":[{\"internalType\":\"address\",\"name\":\"caller\",\"type\":\"address\"}],\"name\":\"NotOwner\",\"type\":\"error\"},{\"anonymous\":false,\"inputs\":[{\"indexed\":true,\"internalType\":\"uint64\",\"name\":\"treeSize\",\"type\":\"uint64\"},{\"indexed\":false,\"internalType\":\"bytes32\",\"name\":\"root\",\"type\":\"bytes32\"}],\"name\":\"Anchored\",\"type\":\"event\"},{\"inputs\":[{\"internalType\":\"uint64\",\"name\":\"treeSize\",\"type\":\"uint64\"},{\"internalType\":\"bytes32\",\"name\":\"root\",\"type\":\"bytes32\"}],\"name\":\"anchor\",\"outputs\":[],\"stateMutability\":\"nonpayable\",\"type\":\"function\"},{\"inputs\":[],\"name\":\"latest\",\"outputs\":[{\"internalType\":\"uint64\",\"name\":\"treeSize\",\"type\":\"uint64\"},{\"internalType\":\"bytes32\",\"name\":\"root\",\"type\":\"bytes32\"}],\"stateMutability\":\"view\",\"type\":\"function\"},{\"inputs\":[],\"name\":\"owner\",\"outputs\":[{\"internalType\":\"address\",\"name\":\"\",\"type\":\"address\"}],\"stateMutability\":\"view\",\"type\":\"function\"},{\"inputs\":[{\"internalType\":\"uint64\",\"name\":\"treeSize\",\"type\":\"uint64\"}],\"name\":\"rootAt\",\"outputs\":[{\"internalType\":\"bytes32\",\"name\":\"root\",\"type\":\"bytes32\"}],\"stateMutability\":\"view\",\"type\":\"function\"}]",
	ID:  "AnchorContract",
	Bin: "0x6080604052348015600e575f5ffd5b505f80546001600160a01b031916331790556102808061002d5f395ff3fe608060405234801561000f575f5ffd5b506004361061004a575f3560e01c806352bfe7891461004e5780638da5cb5b14610087578063a6855208146100b1578063eaa38b41146100c6575b5f5ffd5b5f8054600160a01b900467ffffffffffffffff168082526001602090815260409283902054835192835290820152015b60405180910390f35b5f54610099906001600160a01b031681565b6040516001600160a01b03909116815260200161007e565b6100c46100bf366004610202565b6100fd565b005b6100ef6100d436600461022a565b67ffffffffffffffff165f9081526001602052604090205490565b60405190815260200161007e565b5f546001600160a01b0316331461012e5760405163245aecd360e01b81523360048201526024015b60405180910390fd5b5f5467ffffffffffffffff600160a01b909104811690831681106101785760405162c1bd4760e81b815267ffffffffffffffff808516600483015282166024820152604401610125565b67ffffffffffffffff83165f818152600160209081526040808320869055825467ffffffffffffffff60a01b1916600160a01b85021790925590518481527f4ac5b9bdb01817da80ec1c33e76c5bef927ab969dd8e8ba4ce21da0d7996e56f910160405180910390a2505050565b803567ffffffffffffffff811681146101fd575f5ffd5b919050565b5f5f60408385031215610213575f5ffd5b61021c836101e6565b946020939093013593505050565b5f6020828403121561023a575f5ffd5b610243826101e6565b939250505056fea2646970667358221220aa0116b2c54f48f7324a15f8ce87a68817018f68f1c1a29217b27c89de91b92364736f6c63430008250033",
}

// AnchorContract is an auto generated Go binding around an Ethereum contract.
type AnchorContract struct {
	abi abi.ABI
}

// GetABI returns the ABI associated with this contract binding.
func (c *AnchorContract) GetABI() abi.ABI {
	return c.abi
}

// NewAnchorContract creates a new instance of AnchorContract.
func NewAnchorContract() *AnchorContract {
	parsed, err := AnchorContractMetaData.ParseABI()
	if err != nil {
		panic(errors.New("invalid ABI: " + err.Error()))
	}
	return &AnchorContract{abi: *parsed}
}

// Instance creates a wrapper for a deployed contract instance at the given address.
// Use this to create the instance object passed to abigen v2 library functions Call, Transact, etc.
func (c *AnchorContract) Instance(backend bind.ContractBackend, addr common.Address) *bind.BoundContract {
	return bind.NewBoundContract(addr, c.abi, backend, backend, backend)
}

// PackAnchor is the Go binding used to pack the parameters required for calling
// the contract method with ID 0xa6855208.  This method will panic if any
// invalid/nil inputs are passed.
//
// Solidity: function anchor(uint64 treeSize, bytes32 root) returns()
func (anchorContract *AnchorContract) PackAnchor(treeSize uint64, root [32]byte) []byte {
	enc, err := anchorContract.abi.Pack("anchor", treeSize, root)
	if err != nil {
		panic(err)
	}
	return enc
}

// TryPackAnchor is the Go binding used to pack the parameters required for calling
// the contract method with ID 0xa6855208.  This method will return an error
// if any inputs are invalid/nil.
//
// Solidity: function anchor(uint64 treeSize, bytes32 root) returns()
func (anchorContract *AnchorContract) TryPackAnchor(treeSize uint64, root [32]byte) ([]byte, error) {
	return anchorContract.abi.Pack("anchor", treeSize, root)
}

// PackLatest is the Go binding used to pack the parameters required for calling
// the contract method with ID 0x52bfe789.  This method will panic if any
// invalid/nil inputs are passed.
//
// Solidity: function latest() view returns(uint64 treeSize, bytes32 root)
func (anchorContract *AnchorContract) PackLatest() []byte {
	enc, err := anchorContract.abi.Pack("latest")
	if err != nil {
		panic(err)
	}
	return enc
}

// TryPackLatest is the Go binding used to pack the parameters required for calling
// the contract method with ID 0x52bfe789.  This method will return an error
// if any inputs are invalid/nil.
//
// Solidity: function latest() view returns(uint64 treeSize, bytes32 root)
func (anchorContract *AnchorContract) TryPackLatest() ([]byte, error) {
	return anchorContract.abi.Pack("latest")
}

// LatestOutput serves as a container for the return parameters of contract
// method Latest.
type LatestOutput struct {
	TreeSize uint64
	Root     [32]byte
}

// UnpackLatest is the Go binding that unpacks the parameters returned
// from invoking the contract method with ID 0x52bfe789.
//
// Solidity: function latest() view returns(uint64 treeSize, bytes32 root)
func (anchorContract *AnchorContract) UnpackLatest(data []byte) (LatestOutput, error) {
	out, err := anchorContract.abi.Unpack("latest", data)
	outstruct := new(LatestOutput)
	if err != nil {
		return *outstruct, err
	}
	outstruct.TreeSize = *abi.ConvertType(out[0], new(uint64)).(*uint64)
	outstruct.Root = *abi.ConvertType(out[1], new([32]byte)).(*[32]byte)
	return *outstruct, nil
}

// PackOwner is the Go binding used to pack the parameters required for calling
// the contract method with ID 0x8da5cb5b.  This method will panic if any
// invalid/nil inputs are passed.
//
// Solidity: function owner() view returns(address)
func (anchorContract *AnchorContract) PackOwner() []byte {
	enc, err := anchorContract.abi.Pack("owner")
	if err != nil {
		panic(err)
	}
	return enc
}

// TryPackOwner is the Go binding used to pack the parameters required for calling
// the contract method with ID 0x8da5cb5b.  This method will return an error
// if any inputs are invalid/nil.
//
// Solidity: function owner() view returns(address)
func (anchorContract *AnchorContract) TryPackOwner() ([]byte, error) {
	return anchorContract.abi.Pack("owner")
}

// UnpackOwner is the Go binding that unpacks the parameters returned
// from invoking the contract method with ID 0x8da5cb5b.
//
// Solidity: function owner() view returns(address)
func (anchorContract *AnchorContract) UnpackOwner(data []byte) (common.Address, error) {
	out, err := anchorContract.abi.Unpack("owner", data)
	if err != nil {
		return *new(common.Address), err
	}
	out0 := *abi.ConvertType(out[0], new(common.Address)).(*common.Address)
	return out0, nil
}

// PackRootAt is the Go binding used to pack the parameters required for calling
// the contract method with ID 0xeaa38b41.  This method will panic if any
// invalid/nil inputs are passed.
//
// Solidity: function rootAt(uint64 treeSize) view returns(bytes32 root)
func (anchorContract *AnchorContract) PackRootAt(treeSize uint64) []byte {
	enc, err := anchorContract.abi.Pack("rootAt", treeSize)
	if err != nil {
		panic(err)
	}
	return enc
}

// TryPackRootAt is the Go binding used to pack the parameters required for calling
// the contract method with ID 0xeaa38b41.  This method will return an error
// if any inputs are invalid/nil.
//
// Solidity: function rootAt(uint64 treeSize) view returns(bytes32 root)
func (anchorContract *AnchorContract) TryPackRootAt(treeSize uint64) ([]byte, error) {
	return anchorContract.abi.Pack("rootAt", treeSize)
}

// UnpackRootAt is the Go binding that unpacks the parameters returned
// from invoking the contract method with ID 0xeaa38b41.
//
// Solidity: function rootAt(uint64 treeSize) view returns(bytes32 root)
func (anchorContract *AnchorContract) UnpackRootAt(data []byte) ([32]byte, error) {
	out, err := anchorContract.abi.Unpack("rootAt", data)
	if err != nil {
		return *new([32]byte), err
	}
	out0 := *abi.ConvertType(out[0], new([32]byte)).(*[32]byte)
	return out0, nil
}

// AnchorContractAnchored represents a Anchored event raised by the AnchorContract contract.
type AnchorContractAnchored struct {
	TreeSize uint64
	Root     [32]byte
	Raw      *types.Log // Blockchain specific contextual infos
}

const AnchorContractAnchoredEventName = "Anchored"

// ContractEventName returns the user-defined event name.
func (AnchorContractAnchored) ContractEventName() string {
	return AnchorContractAnchoredEventName
}

// UnpackAnchoredEvent is the Go binding that unpacks the event data emitted
// by contract.
//
// Solidity: event Anchored(uint64 indexed treeSize, bytes32 root)
func (anchorContract *AnchorContract) UnpackAnchoredEvent(log *types.Log) (*AnchorContractAnchored, error) {
	event := "Anchored"
	if len(log.Topics) == 0 {
		return nil, bind.ErrNoEventSignature
	}
	if log.Topics[0] != anchorContract.abi.Events[event].ID {
		return nil, bind.ErrEventSignatureMismatch
	}
	out := new(AnchorContractAnchored)
	if len(log.Data) > 0 {
		if err := anchorContract.abi.UnpackIntoInterface(out, event, log.Data); err != nil {
			return nil, err
		}
	}
	var indexed abi.Arguments
	for _, arg := range anchorContract.abi.Events[event].Inputs {
		if arg.Indexed {
			indexed = append(indexed, arg)
		}
	}
	if err := abi.ParseTopics(out, indexed, log.Topics[1:]); err != nil {
		return nil, err
	}
	out.Raw = log
	return out, nil
}

// UnpackError attempts to decode the provided error data using user-defined
// error definitions.
func (anchorContract *AnchorContract) UnpackError(raw []byte) (any, error) {
	if bytes.Equal(raw[:4], anchorContract.abi.Errors["NotGrowing"].ID.Bytes()[:4]) {
		return anchorContract.UnpackNotGrowingError(raw[4:])
	}
	if bytes.Equal(raw[:4], anchorContract.abi.Errors["NotOwner"].ID.Bytes()[:4]) {
		return anchorContract.UnpackNotOwnerError(raw[4:])
	}
	return nil, errors.New("Unknown error")
}

// AnchorContractNotGrowing represents a NotGrowing error raised by the AnchorContract contract.
type AnchorContractNotGrowing struct {
	TreeSize   uint64
	LatestSize uint64
}

// ErrorID returns the hash of canonical representation of the error's signature.
//
// Solidity: error NotGrowing(uint64 treeSize, uint64 latestSize)
func AnchorContractNotGrowingErrorID() common.Hash {
	return common.HexToHash("0xc1bd47003e89a4e90813ecfc526b771a9fbd0f8c2255d075cfa111386ce23320")
}

// UnpackNotGrowingError is the Go binding used to decode the provided
// error data into the corresponding Go error struct.
//
// Solidity: error NotGrowing(uint64 treeSize, uint64 latestSize)
func (anchorContract *AnchorContract) UnpackNotGrowingError(raw []byte) (*AnchorContractNotGrowing, error) {
	out := new(AnchorContractNotGrowing)
	if err := anchorContract.abi.UnpackIntoInterface(out, "NotGrowing", raw); err != nil {
		return nil, err
	}
	return out, nil
}

// AnchorContractNotOwner represents a NotOwner error raised by the AnchorContract contract.
type AnchorContractNotOwner struct {
	Caller common.Address
}

// ErrorID returns the hash of canonical representation of the error's signature.
//
// Solidity: error NotOwner(address caller)
func AnchorContractNotOwnerErrorID() common.Hash {
	return common.HexToHash("0x245aecd3fabbd17d6c3c92dc7f0ab916ea8cbf6fc1862c8b56893090ac3fff4c")
}

// UnpackNotOwnerError is the Go binding used to decode the provided
// error data into the corresponding Go error struct.
//
// Solidity: error NotOwner(address caller)
func (anchorContract *AnchorContract) UnpackNotOwnerError(raw []byte) (*AnchorContractNotOwner, error) {
	out := new(AnchorContractNotOwner)
	if err := anchorContract.abi.UnpackIntoInterface(out, "NotOwner", raw); err != nil {
		return nil, err
	}
	return out, nil
}
